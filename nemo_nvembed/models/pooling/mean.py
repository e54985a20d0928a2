"""Mean pooling over the pooled span (the paper's ablation, Table 2)."""
from __future__ import annotations

import torch

from nemo_nvembed.models.pooling.base import PoolingType, masked_mean


class MeanPooler(torch.nn.Module):
    def forward(self, hidden, attention_mask, pool_mask):
        return masked_mean(hidden, pool_mask)


class Mean(PoolingType):
    hf_backbone_only = True

    @staticmethod
    def build(pooling_cfg, hidden_size, config, tp):
        return MeanPooler()

    @classmethod
    def hf_config(cls, pooling_cfg, hidden_size):
        return ({"architectures": ["NVEmbedBackbone"], "model_type": "nvembed_backbone"},
                {"type": pooling_cfg.type, "normalize": bool(pooling_cfg.normalize)})
