"""How each parameter is split over tensor-parallel ranks, and the full (TP=1) view of a model.

A tensor-parallel parameter carries megatron's attributes ``tensor_model_parallel`` and
``partition_dim``. Some fused matrices hold several blocks side by side that are split
*separately* (SwiGLU's ``[gate; up]`` in ``linear_fc1``, the head's ``[K; V]`` and GEGLU input):
rank r holds ``[gate_r; up_r]``. Those carry ``nvembed_chunks = 2``. With these attributes a
single pair of functions converts between the full layout (what ``.nemo`` files and Hugging
Face conversions store, independent of TP) and any rank's shard.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def mark(param: torch.nn.Parameter, partition_dim: int | None, chunks: int = 1) -> torch.nn.Parameter:
    """Attach the split attributes to a parameter (None = replicated on every TP rank)."""
    param.tensor_model_parallel = partition_dim is not None
    param.partition_dim = -1 if partition_dim is None else partition_dim
    param.nvembed_chunks = chunks
    return param


def layout(name: str, param: torch.Tensor) -> tuple[int | None, int]:
    """(partition dim or None, number of separately split blocks) of a parameter."""
    if not getattr(param, "tensor_model_parallel", False):
        return None, 1
    chunks = getattr(param, "nvembed_chunks", None)
    if chunks is None:  # megatron's own gated fc1: [gate; up] split separately
        chunks = 2 if name.endswith("mlp.linear_fc1.weight") else 1
    return param.partition_dim, chunks


def shard(full: torch.Tensor, dim: int | None, chunks: int, rank: int, size: int) -> torch.Tensor:
    """Rank ``rank``'s piece of a full tensor."""
    if dim is None or size == 1:
        return full
    blocks = full.chunk(chunks, dim=dim)
    return torch.cat([b.chunk(size, dim=dim)[rank] for b in blocks], dim=dim)


def unshard(pieces: list[torch.Tensor], dim: int | None, chunks: int) -> torch.Tensor:
    """Inverse of :func:`shard`: the full tensor from every rank's piece (in rank order)."""
    if dim is None or len(pieces) == 1:
        return pieces[0]
    per_rank = [p.chunk(chunks, dim=dim) for p in pieces]  # [rank][block]
    return torch.cat([torch.cat([r[c] for r in per_rank], dim=dim) for c in range(chunks)], dim=dim)


def _tp():
    from megatron.core import parallel_state as ps

    return ps.get_tensor_model_parallel_group(), ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()


def gather_tensor(name: str, param: torch.Tensor, local: torch.Tensor | None = None) -> torch.Tensor:
    """Full tensor of ``param`` (or of ``local``, a same-shaped tensor such as its gradient)."""
    local = param.detach() if local is None else local.detach()
    dim, chunks = layout(name, param)
    group, _, size = _tp()
    if dim is None or size == 1:
        return local.clone()
    pieces = [torch.empty_like(local) for _ in range(size)]
    dist.all_gather(pieces, local.contiguous(), group=group)
    return unshard(pieces, dim, chunks)


# Transformer Engine's layer spec fuses the pre-norms into the following linear; checkpoints and
# conversions always use megatron's local names, so a .nemo moves between CPU and TE builds.
_TE_NAMES = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
}


def canonical(name: str) -> str:
    for te, local in _TE_NAMES.items():
        if name.endswith(te):
            return name[: -len(te)] + local
    return name


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter in the full (TP=1) layout, on CPU, by local name. Collective over the TP group."""
    return {canonical(n): gather_tensor(n, p).cpu() for n, p in module.named_parameters()}


def full_grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Gradients of trainable parameters in the full layout (tests compare TP=2 with TP=1)."""
    return {
        canonical(n): gather_tensor(n, p, p.grad).cpu()
        for n, p in module.named_parameters()
        if p.requires_grad and p.grad is not None
    }


def load_full_state_dict(module: torch.nn.Module, full: dict[str, torch.Tensor], source: str = "state dict") -> None:
    """Copy this rank's shard of every full tensor into the module; names must match exactly."""
    params = {canonical(n): (n, p) for n, p in module.named_parameters()}
    missing = sorted(set(params) - set(full))
    unexpected = sorted(set(full) - set(params))
    if missing or unexpected:
        raise KeyError(
            f"{source} does not match the model: missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    _, rank, size = _tp()
    with torch.no_grad():
        for name, (own_name, p) in params.items():
            dim, chunks = layout(own_name, p)
            piece = shard(full[name], dim, chunks, rank, size)
            if piece.shape != p.shape:
                raise ValueError(f"{source}: {name} has shape {tuple(full[name].shape)}, "
                                 f"whose TP shard {tuple(piece.shape)} does not fit {tuple(p.shape)}")
            p.copy_(piece.to(p.dtype))
