"""Differentiable all-gather over any process group (the contrastive loss's cross-rank gather).

``torch.distributed.nn.functional.all_gather`` back-propagates on gloo with ``scatter`` calls that
pass group ranks where global ranks are expected, so its backward fails on a data-parallel
group that is not the whole world (TP x DP with both > 1, e.g. DP group {1, 3}). Here the
backward is one all-reduce of the stacked output gradients, from which each rank keeps its
own slice: d(loss)/d(x_r) = sum over ranks of their gradient for block r.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x, group=group)
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads):
        stacked = torch.stack([g.contiguous() for g in grads])  # [world, ...]
        dist.all_reduce(stacked, group=ctx.group)
        return stacked[dist.get_rank(ctx.group)], None


def all_gather(x: torch.Tensor, group=None) -> list[torch.Tensor]:
    """Every rank's ``x`` in group-rank order, differentiable (gradients flow back to each owner)."""
    return list(_AllGather.apply(x, group))
