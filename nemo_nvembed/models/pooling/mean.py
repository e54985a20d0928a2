"""Mean pooling over the pooled span (the paper's ablation, Table 2)."""
from __future__ import annotations

import torch

from nemo_nvembed.models.pooling.base import PoolingType, masked_mean


class MeanPooler(torch.nn.Module):
    def forward(self, hidden, attention_mask, pool_mask):
        return masked_mean(hidden, pool_mask)

    def forward_packed(self, hidden, pack):  # [t, d] -> [n, d]
        return pack.segment_mean(hidden[pack.pool_index])


class Mean(PoolingType):
    hf_backbone_only = True

    @staticmethod
    def build(pooling_cfg, hidden_size, config, tp):
        return MeanPooler()

    @classmethod
    def hf_config(cls, pooling_cfg, hidden_size):
        return ({"architectures": ["NVEmbedBackbone"], "model_type": "nvembed_backbone"},
                {"type": pooling_cfg.type, "normalize": bool(pooling_cfg.normalize)})
