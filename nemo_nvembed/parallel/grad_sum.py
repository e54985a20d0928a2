"""The data-parallel gradient SUM (training/strategy.py calls it after the step's last backward).

Gradients are summed in buckets of at most ``bucket_numel`` elements, every bucket's all-reduce
launched asynchronously and then awaited: the extra memory is the buckets, not one copy of every
gradient at once (~3 GB at Mistral-7B width with the head), and the collectives overlap each other.
The result equals one all-reduce per gradient (tests/test_grad_reduce.py).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

BUCKET_NUMEL = 32 * 1024 * 1024  # elements per all-reduce bucket (128 MB in fp32), megatron DDP's order of size


def sum_gradients(params, group, bucket_numel: int = BUCKET_NUMEL) -> None:
    """SUM the gradients of trainable parameters over ``group`` in buckets of at most ``bucket_numel``
    elements (a parameter larger than a bucket is its own), all launched asynchronously, then
    awaited: the extra memory is the buckets, not a copy of every gradient at once."""
    grads = [p.grad for p in params if p.requires_grad and p.grad is not None]
    buckets, current, size = [], [], 0
    for g in grads:
        if current and size + g.numel() > bucket_numel:
            buckets.append(current)
            current, size = [], 0
        current.append(g)
        size += g.numel()
    if current:
        buckets.append(current)
    pending = []
    for bucket in buckets:
        flat = bucket[0].reshape(-1) if len(bucket) == 1 else torch.cat([g.reshape(-1) for g in bucket])
        pending.append((bucket, flat, dist.all_reduce(flat, group=group, async_op=True)))
    for bucket, flat, work in pending:
        work.wait()
        if len(bucket) == 1:
            if flat.data_ptr() != bucket[0].data_ptr():  # reshape copied a non-contiguous gradient
                bucket[0].copy_(flat.view_as(bucket[0]))
            continue
        offset = 0
        for g in bucket:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
