"""Attention pooling types (their modules: :mod:`nemo_nvembed.models.pooling.latent_attention`): NV-Embed's latent attention
(section 3.2) and the self-attention ablation (Table 2)."""
from __future__ import annotations

import dataclasses

from nemo_nvembed.models.pooling.latent_attention import AttentionPooler
from nemo_nvembed.models.pooling.base import PoolingType


class LatentAttention(PoolingType):
    latent = True

    @classmethod
    def build(cls, pooling_cfg, hidden_size, config, tp):
        head_config = dataclasses.replace(config, sequence_parallel=False)  # head sees full sequences
        return AttentionPooler(hidden_size, pooling_cfg, head_config, tp, latent=cls.latent)

    @staticmethod
    def tp_divisible(pooling_cfg):
        return {"pooling.num_heads": pooling_cfg.num_heads}

    @classmethod
    def flops_per_token(cls, p, hidden_size, seq_len):
        inner, d = p.num_heads * p.dim_head, hidden_size
        n_h = 2 * d * inner + 3 * p.ff_mult * d * d
        a_h = 4 * (p.num_latents if cls.latent else seq_len) * inner
        return 6 * n_h + 3 * a_h

    @classmethod
    def hf_config(cls, p, hidden_size):
        return ({"latent_attention_config": {
            "model_type": "latent_attention",
            "num_latents_value": p.num_latents,
            "num_cross_heads": p.num_heads,
            "hidden_dim": hidden_size,
            "latent_dim": hidden_size,
            "cross_dim_head": p.dim_head,
            "output_normalize": bool(p.normalize),
        }}, {"type": p.type, "normalize": bool(p.normalize), "ff_mult": p.ff_mult})


class SelfAttention(LatentAttention):
    latent = False
    hf_config = classmethod(PoolingType.hf_config.__func__)  # no released layout
