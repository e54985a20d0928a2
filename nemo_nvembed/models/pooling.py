"""Pooling: from token states [b, s, d] to one embedding [b, d] (paper section 3.2, Table 2).

``latent_attention`` is NV-Embed's choice; ``mean``, ``eos`` (last non-padding token) and
``self_attention`` (a self-attention layer + MLP, then mean) are the paper's ablations.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from nemo_nvembed.models.latent_attention import AttentionPooler, masked_mean


class MeanPooler(torch.nn.Module):
    def forward(self, hidden, attention_mask, pool_mask):
        return masked_mean(hidden, pool_mask)


class EOSPooler(torch.nn.Module):
    """The last non-padding token (right padding, EOS appended: the EOS token's state)."""

    def forward(self, hidden, attention_mask, pool_mask):
        last = attention_mask.long().sum(1) - 1  # [b]
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [b, d]


class Pooler(torch.nn.Module):
    """Named ``latent_attention_model`` in the model so its parameters carry NV-Embed-v2's prefix."""

    def __init__(self, pooling_cfg, hidden_size: int, config, tp: int):
        super().__init__()
        self.type, self.normalize = pooling_cfg.type, pooling_cfg.normalize
        if self.type in ("latent_attention", "self_attention"):
            head_config = dataclasses.replace(config, sequence_parallel=False)  # head sees full sequences
            self.head = AttentionPooler(hidden_size, pooling_cfg, head_config, tp, latent=self.type == "latent_attention")
        elif self.type == "mean":
            self.head = MeanPooler()
        elif self.type == "eos":
            self.head = EOSPooler()
        else:
            raise ValueError(f"unknown pooling type {self.type!r}")

    def forward(self, hidden, attention_mask, pool_mask):
        pooled = self.head(hidden, attention_mask, pool_mask)  # [b, d]
        return F.normalize(pooled, dim=-1) if self.normalize else pooled
