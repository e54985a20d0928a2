"""Tensor-parallel LoRA on megatron's column- and row-parallel linears (paper section 3.3).

``y = W x + (alpha / r) * B A dropout(x)``. The adapter attaches to the existing megatron
module (its own parameters ``lora_A``/``lora_B`` and a forward hook), so base weight names stay
megatron's and the full-layout conversion in :mod:`tp_layout` covers the adapters too.

Column-parallel (qkv, fc1: output split over TP): A [r, in] is replicated, B [out/tp, r] is
split like the base weight (including fc1's separately split [gate; up] halves). ``A x`` is the
same on every rank; ``copy_to_tensor_model_parallel_region`` makes its gradient the sum of all
ranks' contributions, so A's gradient is complete and identical on every rank.

Row-parallel (proj, fc2: input split over TP): A [r, in/tp] is split on its input dim, B [out, r]
is replicated. Partial ``A_r x_r`` are summed over ranks (``reduce_from_...``: all-reduce forward,
identity backward) before B, exactly as the base layer reduces its own partial products.

LoRA dropout is :mod:`keyed_dropout`: the mask of an input element depends on its sequence, token
and full-layout feature only, so TP ranks (and DP layouts, chunkings) draw what one process draws.
"""
from __future__ import annotations

import math
import re

import torch
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
    reduce_from_tensor_model_parallel_region,
    scatter_to_sequence_parallel_region,
)

from nemo_nvembed.models import keyed_dropout
from nemo_nvembed.parallel import tp_layout


def _is_column(module) -> bool:
    if isinstance(module, ColumnParallelLinear):
        return True
    return type(module).__name__ in ("TEColumnParallelLinear", "TELayerNormColumnParallelLinear")


def _is_row(module) -> bool:
    return isinstance(module, RowParallelLinear) or type(module).__name__ == "TERowParallelLinear"


def _local_in_out(module) -> tuple[int, int]:
    out_f, in_f = module.weight.shape  # local shard
    return in_f, out_f


class _LoRAHook:
    def __init__(self, module, column: bool, scale: float, dropout: float, sequence_parallel: bool, name: str):
        self.column, self.scale, self.sequence_parallel = column, scale, sequence_parallel
        self.p, self.salt = dropout, keyed_dropout.salt_of(name)  # each adapter draws its own masks
        module.register_forward_hook(self)

    def __call__(self, module, args, output):
        x = args[0]  # column: [s(/tp), b, in]; row: [s, b, in/tp]
        out, bias = output
        A, B = module.lora_A, module.lora_B
        if self.column:
            if self.sequence_parallel:  # base layer all-gathers the sequence itself
                x = gather_from_sequence_parallel_region(x, tensor_parallel_output_grad=False)
            xd = keyed_dropout.dropout(x, self.p, module.training, self.salt)  # same mask on all TP ranks
            a = torch.nn.functional.linear(xd, A)  # [s, b, r], same on all TP ranks
            a = copy_to_tensor_model_parallel_region(a)
            delta = torch.nn.functional.linear(a * self.scale, B)  # [s, b, out/tp]
        else:
            # x is split on features: this rank's slice of the full-layout mask
            xd = keyed_dropout.dropout(x, self.p, module.training, self.salt, feature_offset=_tp_rank() * x.shape[-1])
            a = reduce_from_tensor_model_parallel_region(torch.nn.functional.linear(xd, A))  # [s, b, r]
            delta = torch.nn.functional.linear(a * self.scale, B)  # [s, b, out]
            if self.sequence_parallel:
                delta = scatter_to_sequence_parallel_region(delta)
        # alpha / r scales the rank-r activations, not the full-width output: one full-width write fewer
        # forward and backward (the same values when the scale is a power of two, as 32 / 16 is)
        return out + delta.to(out.dtype), bias


def _tp_rank() -> int:
    from megatron.core import parallel_state as ps

    return ps.get_tensor_model_parallel_rank() if ps.model_parallel_is_initialized() else 0


def _below_first_layer(name: str, first_layer: int) -> bool:
    """Whether a module sits in a transformer layer (``decoder.layers.<i>.``) below ``first_layer``."""
    match = re.search(r"(?:^|\.)layers\.(\d+)\.", name)
    return match is not None and int(match.group(1)) < first_layer


def apply_lora(backbone: torch.nn.Module, lora_cfg) -> list[str]:
    """Freeze the backbone and attach adapters to ``lora_cfg.target_modules``; returns their names."""
    for p in backbone.parameters():
        p.requires_grad_(False)
    if not lora_cfg.enabled:
        return []
    if lora_cfg.dropout:
        keyed_dropout.keep_keys_through_recompute()
    targets = set(lora_cfg.target_modules)
    scale = lora_cfg.alpha / lora_cfg.rank
    attached = []
    for name, module in backbone.named_modules():
        if name.rsplit(".", 1)[-1] not in targets or _below_first_layer(name, lora_cfg.first_layer):
            continue
        column, row = _is_column(module), _is_row(module)
        if not (column or row):
            raise TypeError(f"LoRA target {name} is a {type(module).__name__}, not a parallel linear")
        in_f, out_f = _local_in_out(module)
        fc1 = name.endswith("linear_fc1")
        A = torch.empty(lora_cfg.rank, in_f, dtype=module.weight.dtype, device=module.weight.device)
        B = torch.zeros(out_f, lora_cfg.rank, dtype=module.weight.dtype, device=module.weight.device)
        # Kaiming-uniform A, zero B: the adapter starts as the identity (LoRA paper, section 4.1).
        torch.nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        module.lora_A = tp_layout.mark(torch.nn.Parameter(A), None if column else 1)
        module.lora_B = tp_layout.mark(torch.nn.Parameter(B), 0 if column else None, chunks=2 if fc1 else 1)
        sp = bool(getattr(module, "sequence_parallel", False))
        module._nvembed_lora = _LoRAHook(module, column, scale, lora_cfg.dropout, sp, name)
        attached.append(name)
    if not attached:
        raise ValueError(f"lora.target_modules {sorted(targets)} matched no module of the backbone")
    return attached
