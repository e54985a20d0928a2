"""Split an embedding job over the data-parallel ranks: each encodes a share, all get every row.

In-training validation runs on every rank (tensor-parallel ranks must take part in each forward).
Without sharding, every data-parallel rank encodes the whole validation set: with DP = 2 on a
2-core CPU that doubles the wall time of each validation. :class:`DPShardedEncoder` wraps a model's
``encode``: each DP rank embeds every DP-size-th text in length order (so the shares cost alike),
the shares are all-gathered over the DP group, and every rank returns the full [n, d] matrix in
input order, equal to the unsharded ``encode`` (tested against it).
"""
from __future__ import annotations

import torch


class DPShardedEncoder:
    def __init__(self, model, dp_rank: int, dp_size: int, group=None):
        self.model, self.rank, self.size, self.group = model, dp_rank, dp_size, group

    @classmethod
    def for_current_run(cls, model) -> "DPShardedEncoder":
        from nemo_nvembed.parallel import distributed

        if not distributed.is_initialized():
            return cls(model, 0, 1)
        return cls(model, distributed.dp_rank(), distributed.dp_size(), distributed.dp_group())

    def encode(self, texts: list[str], **kwargs) -> torch.Tensor:
        if self.size == 1:
            return self.model.encode(texts, **kwargs)
        order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
        mine = order[self.rank :: self.size]
        emb = self.model.encode([texts[i] for i in mine], **kwargs)  # [len(mine), d]
        shares = [None] * self.size
        torch.distributed.all_gather_object(shares, (mine, emb), group=self.group)
        out = torch.empty(len(texts), emb.shape[1], dtype=emb.dtype)
        for idx, share in shares:
            out[idx] = share
        return out
