"""Our megatron backbone vs transformers (fp32): SmolLM2 (imported GGUF) and a tiny random Mistral.

Causal: compared with transformers' own causal model. Bidirectional: compared with transformers
given a full (non-causal) 4D padding mask. Only real tokens are compared (padding rows are junk
in both). The error is max|ours - ref| / max|ref| over real tokens.
"""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO
from nemo_nvembed.interop.hf_import import backbone_config, hf_to_megatron, load_source, tokenizer_config


def rel_err(ours, ref, mask):
    m = mask.bool()
    return ((ours - ref)[m].abs().max() / ref[m].abs().max()).item()


def hf_hidden(hf_model, ids, att, attention: str):
    if attention == "causal":
        return hf_model(ids, attention_mask=att).last_hidden_state
    s = ids.shape[1]
    blocked = ~att.bool()[:, None, None, :].expand(-1, 1, s, s)  # [b, 1, s, s]: every real key, no causality
    full = torch.zeros(blocked.shape).masked_fill(blocked, torch.finfo(torch.float32).min)
    return hf_model(ids, attention_mask=full).last_hidden_state


def our_hidden(model, ids, att):
    from nemo_nvembed.models.backbone import attention_mask

    pos = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
    return model.backbone(ids, pos, attention_mask(att, model.cfg.attention)).transpose(0, 1)


def build_from_hf(hf_cfg: dict, hf_sd, tokenizer_file, tok_cfg, attention):
    from nemo_nvembed.models.network import NVEmbedNetwork

    cfg = OmegaConf.load(REPO / "conf" / "model" / "tiny.yaml")
    b = backbone_config(hf_cfg)
    cfg.backbone = OmegaConf.merge(cfg.backbone, b)
    cfg.tokenizer = OmegaConf.merge(cfg.tokenizer, tok_cfg, {"file": tokenizer_file})
    cfg.attention = attention
    model = NVEmbedNetwork(cfg).eval()
    full = model.full_state_dict()
    full.update(hf_to_megatron(hf_sd, b))
    model.load_full_state_dict(full)
    return model


@pytest.fixture(scope="module")
def smollm2():
    src = load_source("smollm2")
    from transformers import LlamaModel

    from transformers import LlamaConfig

    hf = LlamaModel(LlamaConfig(**src.config))
    hf.load_state_dict(src.state_dict)
    hf.config._attn_implementation = "eager"
    return src, hf.eval()


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_smollm2_matches_transformers(smollm2, attention, tokenizer_file, single_process):
    src, hf = smollm2
    model = build_from_hf(src.config, src.state_dict, tokenizer_file, tokenizer_config(src.tokenizer), attention)
    texts = ["The quick brown fox jumps over the lazy dog.", "Embeddings!", "def f(x):\n    return x * 2"]
    enc = src.tokenizer(texts, padding=True, return_tensors="pt")
    ids, att = enc["input_ids"], enc["attention_mask"]
    assert (att == 0).any(), "the batch must contain padding"
    with torch.no_grad():
        err = rel_err(our_hidden(model, ids, att), hf_hidden(hf, ids, att, attention), att)
    print(f"SmolLM2 {attention}: max relative error {err:.2e}")
    assert err <= 1e-4


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_tiny_mistral_matches_transformers(attention, tokenizer_file, single_process):
    from transformers import MistralConfig, MistralModel

    torch.manual_seed(0)
    hf_cfg = MistralConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                           rope_theta=10000.0, rms_norm_eps=1e-5, attn_implementation="eager")
    hf = MistralModel(hf_cfg).eval()
    tok_cfg = dict(bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>", add_bos=False)
    model = build_from_hf(hf_cfg.to_dict(), hf.state_dict(), tokenizer_file, tok_cfg, attention)
    ids = torch.randint(0, 49152, (3, 11))
    att = torch.ones(3, 11, dtype=torch.long)
    att[1, 7:] = 0
    att[2, 3:] = 0
    with torch.no_grad():
        err = rel_err(our_hidden(model, ids, att), hf_hidden(hf, ids, att, attention), att)
    print(f"tiny Mistral {attention}: max relative error {err:.2e}")
    assert err <= 1e-4


def test_round_trip_to_hf_names():
    """megatron_to_hf inverts hf_to_megatron exactly (the fused QKV / gate-up layouts)."""
    from nemo_nvembed.interop.hf_import import megatron_to_hf

    b = dict(num_layers=1, hidden_size=48, num_attention_heads=6, num_query_groups=2)
    g = torch.Generator().manual_seed(0)
    hf = {
        "embed_tokens.weight": torch.randn(10, 48, generator=g),
        "layers.0.self_attn.q_proj.weight": torch.randn(48, 48, generator=g),
        "layers.0.self_attn.k_proj.weight": torch.randn(16, 48, generator=g),
        "layers.0.self_attn.v_proj.weight": torch.randn(16, 48, generator=g),
        "layers.0.self_attn.o_proj.weight": torch.randn(48, 48, generator=g),
        "layers.0.input_layernorm.weight": torch.randn(48, generator=g),
        "layers.0.post_attention_layernorm.weight": torch.randn(48, generator=g),
        "layers.0.mlp.gate_proj.weight": torch.randn(96, 48, generator=g),
        "layers.0.mlp.up_proj.weight": torch.randn(96, 48, generator=g),
        "layers.0.mlp.down_proj.weight": torch.randn(48, 96, generator=g),
        "norm.weight": torch.randn(48, generator=g),
    }
    back = megatron_to_hf(hf_to_megatron(hf, b), b)
    assert back.keys() == hf.keys()
    for k in hf:
        torch.testing.assert_close(back[k], hf[k], rtol=0, atol=0)
