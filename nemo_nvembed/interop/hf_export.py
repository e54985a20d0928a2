"""``python -m nemo_nvembed.export hf --model X.nemo --out DIR [--tp N] [--dtype fp32|bf16|fp16]``

Writes a ``.nemo`` as a Hugging Face folder in NV-Embed-v2's layout (the released ``nvidia/NV-Embed-v2`` on the Hugging Face Hub):

- ``config.json``: ``model_type: "nvembed"``, ``architectures: ["NVEmbedModel"]``,
  ``latent_attention_config`` {num_latents_value, num_cross_heads, hidden_dim, latent_dim,
  cross_dim_head, output_normalize}, ``text_config`` (the backbone's HF Mistral/Llama config),
  ``padding_side: "right"``, ``is_mask_instruction: true``, ``add_eos: true``. Our own extras, which
  the released code ignores and ``convert from-hf`` honours: ``pooling`` {type, normalize, ff_mult},
  ``attention``, ``query_template``, ``max_length``.
- safetensors: ``embedding_model.<HF Mistral/Llama names>`` (LoRA merged: W + alpha/rank * B A)
  and ``latent_attention_model.<released head names>``; one file, or 5 GB shards + index.
- the ``.nemo``'s tokenizer as an HF fast tokenizer (bos/eos/pad set, right padding), whose own
  BOS behaviour is made to match the model's ``tokenizer.add_bos``; ``tokenizer.json`` keeps BPE
  merges as ``"a b"`` strings, which older tokenizers releases also parse.
- for HF clients (``interop/hf_clients.py``): remote code (``modeling_nvembed.py`` ...) and
  ``auto_map``, ``hidden_size``, ``mask_type``, ``pool_span``, ``text_config.model_type``
  ``bidir_mistral``/``bidir_llama`` and ``text_config._name_or_path`` (``--name-or-path``), plus the
  sentence-transformers files, so that ``AutoModel.from_pretrained(DIR, trust_remote_code=True)``
  and ``SentenceTransformer(DIR, trust_remote_code=True)`` load it and equal our ``encode``.

Pooling: only ``latent_attention`` has NV-Embed-v2's layout. ``mean`` and ``eos`` export the
backbone alone with ``model_type: "nvembed_backbone"`` and no ``latent_attention_config`` (so
NV-Embed-v2's remote code refuses it instead of building a random head) and ``pooling`` saying how
to pool; ``convert from-hf`` imports it back. ``self_attention`` (an ablation with no released
layout) is refused.

Weights are gathered from every TP rank (launch with N processes for a TP=N export, e.g.
``torchrun --nproc_per_node N -m nemo_nvembed.export hf ... --tp N``); rank 0 writes. The output
folder must not exist yet (or be empty); it is written as ``DIR.partial`` and renamed at the end.
"""
from __future__ import annotations

import json
import os
import shutil

import torch

from nemo_nvembed.parallel import distributed

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
SHARD_BYTES = 5 * 1024**3


def nvembed_config(cfg, tokenizer, dtype: torch.dtype) -> dict:
    """The ``config.json`` dict for a model config (a validated ``ModelConfig``)."""
    from omegaconf import OmegaConf

    from nemo_nvembed.interop.hf_import import hf_text_config
    from nemo_nvembed.models.pooling import pooling_type

    b = OmegaConf.to_container(cfg.backbone, resolve=True)
    p = cfg.pooling
    text = hf_text_config(b, tokenizer)
    text["dtype"] = text["torch_dtype"] = DTYPE_NAMES[dtype]
    out = {
        "architectures": ["NVEmbedModel"],
        "model_type": "nvembed",
        "padding_side": "right",
        "is_mask_instruction": True,
        "add_eos": True,
        "add_pad_token": True,
        "dtype": DTYPE_NAMES[dtype],
        "torch_dtype": DTYPE_NAMES[dtype],
    }
    fields, pooling = pooling_type(p.type).hf_config(p, b["hidden_size"])
    out.update(fields)
    out["text_config"] = text
    out.update(pooling=pooling, attention=cfg.attention, query_template=cfg.query_template, max_length=cfg.max_length)
    return out


def hf_state_dict(full: dict[str, torch.Tensor], cfg, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Our full (TP=1) layout -> NV-Embed-v2 names, LoRA merged, each tensor its own copy in ``dtype``."""
    from omegaconf import OmegaConf

    from nemo_nvembed.interop.hf_import import HF_BACKBONE_PREFIX, head_to_hf, megatron_to_hf

    b = OmegaConf.to_container(cfg.backbone, resolve=True)
    scale = cfg.lora.alpha / cfg.lora.rank if cfg.lora.enabled else None
    out = {HF_BACKBONE_PREFIX + k: v for k, v in megatron_to_hf(full, b, scale).items()}
    out.update(head_to_hf(full))
    # copy=True: q/k/v and gate/up are views of one fused tensor; safetensors refuses shared storage.
    return {k: v.detach().to(dtype=dtype, copy=True).contiguous() for k, v in out.items()}


def hf_tokenizer(tok, tokenizer_cfg, max_length: int):
    """A standalone copy of the model's tokenizer whose ``tok(text)`` adds BOS exactly when the model does."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    out = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=tok.bos_token, eos_token=tok.eos_token,
                                  pad_token=tok.pad_token, padding_side="right", model_max_length=max_length)
    adds_bos = tok.bos_token_id is not None and out("a")["input_ids"][:1] == [tok.bos_token_id]
    if adds_bos != bool(tokenizer_cfg.add_bos):
        if tokenizer_cfg.add_bos:  # keep the existing post-processor (offset trimming etc.), then prepend BOS
            bos = processors.TemplateProcessing(single=f"{tok.bos_token} $A", pair=f"{tok.bos_token} $A {tok.bos_token} $B:1",
                                                special_tokens=[(tok.bos_token, tok.bos_token_id)])
            backend.post_processor = bos if backend.post_processor is None else processors.Sequence([backend.post_processor, bos])
        else:
            backend.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B:1")
        out = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=tok.bos_token, eos_token=tok.eos_token,
                                      pad_token=tok.pad_token, padding_side="right", model_max_length=max_length)
        assert (out("a")["input_ids"][:1] == [tok.bos_token_id]) == bool(tokenizer_cfg.add_bos)
    return out


def _write_safetensors(sd: dict[str, torch.Tensor], folder: str, metadata: dict) -> list[str]:
    from safetensors.torch import save_file

    shards, cur, size = [], {}, 0
    for k, v in sd.items():
        n = v.numel() * v.element_size()
        if cur and size + n > SHARD_BYTES:
            shards.append(cur)
            cur, size = {}, 0
        cur[k], size = v, size + n
    shards.append(cur)
    if len(shards) == 1:
        save_file(shards[0], os.path.join(folder, "model.safetensors"), metadata=metadata)
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in sd.values())}, "weight_map": {}}
    for name, shard in zip(names, shards):
        save_file(shard, os.path.join(folder, name), metadata=metadata)
        index["weight_map"].update({k: name for k in shard})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
    return names


def _patch_json(path: str, **fields) -> None:
    with open(path) as f:
        data = json.load(f)
    data.update(fields)
    with open(path, "w") as f:
        json.dump(data, f, indent=2)


def _refuse_existing(out: str) -> None:
    """Rank 0 decides (its file system is the one written to) and every rank learns it, so none hangs."""
    import torch.distributed as dist

    bad = [distributed.is_global_rank_zero() and os.path.isdir(out) and bool(os.listdir(out))]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(bad, src=0)
    if bad[0]:
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder")


def export_hf(model, out: str, dtype: torch.dtype = torch.float32, name_or_path: str | None = None) -> None:
    """Write ``model`` (an ``NVEmbedNetwork``) to ``out`` in NV-Embed-v2's layout, loadable by HF clients.

    Every rank must call it (the weights are gathered over the TP group); global rank 0 writes.
    ``name_or_path`` (``text_config._name_or_path``, where NV-Embed-v2's own client loads the
    tokenizer from) defaults to the absolute path of ``out``; give the Hub id when uploading.
    """
    from nemo_nvembed.interop import hf_clients
    from nemo_nvembed.paths import CONF

    cfg = model.cfg
    config = nvembed_config(cfg, model.tokenizer, dtype)  # refuses unsupported pooling before the gather
    hf_clients.client_config(config, cfg, name_or_path or os.path.abspath(out))
    _refuse_existing(out)
    full = model.full_state_dict()  # collective
    if distributed.is_global_rank_zero():
        sd = hf_state_dict(full, cfg, dtype)
        del full
        partial = f"{out.rstrip(os.sep)}.partial"
        shutil.rmtree(partial, ignore_errors=True)  # our own leftover from a crashed export
        os.makedirs(partial)
        files = _write_safetensors(sd, partial, {"format": "pt"})
        with open(os.path.join(partial, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        hf_tokenizer(model.tokenizer, cfg.tokenizer, cfg.max_length).save_pretrained(partial)
        _patch_json(os.path.join(partial, "tokenizer_config.json"),
                    tokenizer_class="PreTrainedTokenizerFast")  # transformers 5 writes its own "TokenizersBackend"; 4.x knows only this
        hf_clients.write_client_files(partial, config, cfg, CONF / "tasks.yaml")
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked above)
        os.replace(partial, out)
        n = sum(v.numel() for v in sd.values())
        print(f"wrote {out}: {n / 1e6:.1f}M parameters in {len(files)} safetensors file(s), {DTYPE_NAMES[dtype]}, "
              f"pooling={cfg.pooling.type}, model_type={config['model_type']}, "
              f"LoRA {'merged' if cfg.lora.enabled else 'absent'}")
    distributed.barrier()


def export_nemo(model_path: str, out: str, tp: int | None, dtype: str, name_or_path: str | None = None) -> None:
    """``python -m nemo_nvembed.export hf``: load `model_path` under `tp` (default: the number of processes), export."""
    from nemo_nvembed.models.network import NVEmbedNetwork

    model = NVEmbedNetwork.load(model_path, tp=tp or distributed.read_env().world_size)
    export_hf(model, out, DTYPES[dtype], name_or_path)
