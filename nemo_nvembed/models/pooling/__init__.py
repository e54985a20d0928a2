"""Pooling: from token states [b, s, d] to one embedding [b, d] (paper section 3.2, Table 2).

``latent_attention`` is NV-Embed's choice; ``mean``, ``eos`` (last non-padding token) and
``self_attention`` (a self-attention layer + MLP, then mean) are the paper's ablations.

A pooling type is one file in this package (a :class:`~nemo_nvembed.models.pooling.base.PoolingType`:
how to build it, which sizes TP must divide, its FLOPs, its Hugging Face layout) plus one line in
:data:`POOLINGS`; everything that depends on the type asks it through :func:`pooling_type`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nemo_nvembed.models.pooling.attention import LatentAttention, SelfAttention
from nemo_nvembed.models.pooling.base import PoolingType
from nemo_nvembed.models.pooling.eos import EOS
from nemo_nvembed.models.pooling.mean import Mean

POOLINGS: dict[str, type[PoolingType]] = {
    "latent_attention": LatentAttention,
    "mean": Mean,
    "eos": EOS,
    "self_attention": SelfAttention,
}


def pooling_type(name: str) -> type[PoolingType]:
    if name not in POOLINGS:
        raise ValueError(f"unknown pooling type {name!r}; one of {tuple(POOLINGS)}")
    return POOLINGS[name]


class Pooler(torch.nn.Module):
    """The network's ``pooler``: the pooling type's head (``head``) and the optional L2 normalisation.
    Exports map ``pooler.head.*`` to NV-Embed-v2's ``latent_attention_model.*`` (interop/hf_import.py)."""

    def __init__(self, pooling_cfg, hidden_size: int, config, tp: int):
        super().__init__()
        self.type, self.normalize = pooling_cfg.type, pooling_cfg.normalize
        self.head = pooling_type(self.type).build(pooling_cfg, hidden_size, config, tp)

    def forward(self, hidden, attention_mask, pool_mask):
        pooled = self.head(hidden, attention_mask, pool_mask)  # [b, d]
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def forward_packed(self, hidden, pack):
        """hidden [t, d] of a :class:`~nemo_nvembed.models.packing.Pack` -> [n, d], pooled per sequence."""
        pooled = self.head.forward_packed(hidden, pack)  # [n, d]
        return F.normalize(pooled, dim=-1) if self.normalize else pooled
