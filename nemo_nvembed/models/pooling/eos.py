"""Last-token pooling (the paper's ablation, Table 2): the EOS token's state."""
from __future__ import annotations

import torch

from nemo_nvembed.models.pooling.mean import Mean


class EOSPooler(torch.nn.Module):
    """The last non-padding token (right padding, EOS appended: the EOS token's state)."""

    def forward(self, hidden, attention_mask, pool_mask):
        last = attention_mask.long().sum(1) - 1  # [b]
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [b, d]

    def forward_packed(self, hidden, pack):  # [t, d] -> [n, d]: each sequence's last token
        return hidden[pack.cu_seqlens[1:].long() - 1]


class EOS(Mean):  # exported like mean pooling: the backbone alone
    @staticmethod
    def build(pooling_cfg, hidden_size, config, tp):
        return EOSPooler()
