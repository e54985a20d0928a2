"""What a pooling type provides; one subclass per file of this package."""
from __future__ import annotations

import torch


class PoolingType:
    """A pooling type: static methods, no state (the module it builds holds the weights)."""

    @staticmethod
    def build(pooling_cfg, hidden_size: int, config, tp: int) -> torch.nn.Module:
        """The head: ``forward(hidden [b, s, d], attention_mask [b, s], pool_mask [b, s]) -> [b, d]``."""
        raise NotImplementedError

    @staticmethod
    def tp_divisible(pooling_cfg) -> dict[str, int]:
        """Config sizes the tensor-parallel size must divide, by their ``pooling.*`` name."""
        return {}

    @staticmethod
    def flops_per_token(pooling_cfg, hidden_size: int, seq_len: float) -> float:
        """Training FLOPs of the head per token (forward + activation and weight gradients)."""
        return 0.0

    @classmethod
    def hf_config(cls, pooling_cfg, hidden_size: int) -> tuple[dict, dict]:
        """(fields of NV-Embed-v2's ``config.json``, our ``pooling`` field) for an export."""
        raise ValueError(f"pooling type {pooling_cfg.type!r} has no NV-Embed-v2 layout; export supports latent_attention "
                         f"(NV-Embed-v2's layout) and mean/eos (backbone only)")

    hf_backbone_only = False  # exported as the backbone alone, the type named in the ``pooling`` field


def masked_mean(h: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
    """sum(h * mask) / sum(mask) over the sequence: [b, s, d], [b, s] -> [b, d]."""
    m = pool_mask.to(h.dtype).unsqueeze(-1)  # [b, s, 1]
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)
