"""Replica guard: copies of a parameter that must be identical are compared (cheap checksums).

Inside a TP group, every TP-replicated trainable parameter (latents, norms, biases, replicated
LoRA factors) must be bit-identical on all TP ranks; inside a DP group, every trainable
parameter (each TP rank's shard) must be bit-identical on all DP ranks. Saving takes one rank's
copy, so a silent divergence (e.g. per-rank gradient clipping) would otherwise go unnoticed.

Each parameter gets two float64 checksums (plain sum and a position-weighted sum of its values);
one all-reduce of ``[c, -c]`` with MAX per group gives the largest and smallest value of every
checksum over the group; any difference names the parameter and the step, and every rank stops.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


class ReplicaMismatchError(RuntimeError):
    pass


def checksums(tensors: list[torch.Tensor]) -> torch.Tensor:
    """[n, 2] float64: sum and position-weighted sum of each tensor (bit-stable for equal inputs)."""
    out = []
    for t in tensors:
        v = t.detach().reshape(-1).double()
        w = torch.arange(1, v.numel() + 1, dtype=torch.float64, device=v.device).remainder_(1021).add_(1)
        out.append(torch.stack([v.sum(), (v * w).sum()]))
    if not out:
        return torch.zeros(0, 2, dtype=torch.float64)
    return torch.stack(out).cpu()


def _mismatches(names: list[str], tensors: list[torch.Tensor], group, device) -> list[str]:
    c = checksums(tensors).to(device)
    both = torch.cat([c, -c])
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=group)
    hi, lo = both[: len(c)], -both[len(c):]
    bad = (hi != lo).any(dim=1).nonzero().flatten().tolist()
    return [names[i] for i in bad]


def check_replicas(named_params, step: int, tp_group=None, dp_group=None, where: str = "") -> None:
    """Raise :class:`ReplicaMismatchError` naming the parameters whose copies differ (collective:
    every rank of both groups must call it). A group of size 1 (or None) is not checked."""
    trainable = [(n, p) for n, p in named_params if p.requires_grad]
    if not trainable or not dist.is_initialized():
        return
    device = trainable[0][1].device
    problems = []
    if tp_group is not None and dist.get_world_size(tp_group) > 1:
        rep = [(n, p) for n, p in trainable if not getattr(p, "tensor_model_parallel", False)]
        for n in _mismatches([n for n, _ in rep], [p for _, p in rep], tp_group, device):
            problems.append(f"{n} differs between tensor-parallel ranks")
    if dp_group is not None and dist.get_world_size(dp_group) > 1:
        for n in _mismatches([n for n, _ in trainable], [p for _, p in trainable], dp_group, device):
            problems.append(f"{n} differs between data-parallel ranks")
    # Every rank stops, not only those whose groups saw the difference (the others would hang in
    # the next collective).
    flag = torch.tensor([float(bool(problems))], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() and not problems:
        raise ReplicaMismatchError(f"replicated parameters diverged at step {step}{where} (reported by another rank)")
    if problems:
        listed = "\n  ".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else "")
        raise ReplicaMismatchError(f"replicated parameters diverged at step {step}{where}:\n  {listed}")
