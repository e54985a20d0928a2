"""Gradient clipping by the true global norm over a TP x DP model (megatron-core's clip_grad_norm).

The norm is that of the whole model's gradient in the full (TP=1) layout: each TP shard is counted
once (its squared norm summed over the TP group) and each TP-replicated parameter once (only TP
rank 0 adds it before that sum). It runs after the data-parallel gradient SUM, so every DP rank
holds the same gradients and computes the same norm; every rank therefore applies the same scale
and replicas stay identical. Lightning's own clipping (``torch.nn.utils.clip_grad_norm_`` over the
local shard) would give each TP rank a different scale.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

EPS = 1e-6  # as torch.nn.utils.clip_grad_norm_: scale = max_norm / (norm + EPS)


def global_grad_norm(params, tp_group=None, tp_rank: int = 0) -> torch.Tensor:
    """L2 norm of the gradients of ``params`` (trainable, with ``.grad``) over the TP group, fp32."""
    grads = [p.grad for p in params if p.requires_grad and p.grad is not None]
    # No gradient at all (a skipped non-finite step): the zero norm still goes through the TP all-reduce,
    # so it must sit on the parameters' device (NCCL takes no CPU tensor).
    dev = grads[0].device if grads else next((p.device for p in params if p.requires_grad), torch.device("cpu"))
    total = torch.zeros((), dtype=torch.float32, device=dev)
    # Replicated parameters are counted once (TP rank 0); one fused multi-tensor norm, not a loop of kernels.
    counted = [p.grad.detach() for p in params if p.requires_grad and p.grad is not None
               and (getattr(p, "tensor_model_parallel", False) or tp_rank == 0)]
    if counted:
        total = total + torch.stack(torch._foreach_norm(counted)).float().pow(2).sum()
    if tp_group is not None and dist.is_initialized() and dist.get_world_size(tp_group) > 1:
        dist.all_reduce(total, group=tp_group)
    return total.sqrt()


def clip_grad_norm(params, max_norm: float, tp_group=None, tp_rank: int = 0) -> torch.Tensor:
    """Scale the gradients so that their global norm is at most ``max_norm``; returns the norm before."""
    params = list(params)
    norm = global_grad_norm(params, tp_group, tp_rank)
    coef = torch.clamp(max_norm / (norm + EPS), max=1.0)
    grads = [p.grad.detach() for p in params if p.requires_grad and p.grad is not None]
    if grads:
        torch._foreach_mul_(grads, coef.to(grads[0].device))  # one fused multi-tensor scale
    return norm
