"""What one training step costs, counted rather than timed: FLOPs, aten calls, host syncs, bytes, memory.

These numbers mean the same on CPU and GPU, so a CPU run bounds what a GPU run can reach: a step
that issues 10,000 aten calls is launch-bound on any GPU, one that executes twice its model FLOPs
cannot pass 50% MFU. Definitions (per step, the benchmark's JSON keys):

- ``model_flops`` (:func:`model_flops`): the FLOPs the step *needs*, counted on an unpadded
  reference: every sequence at its real length, forward of the whole network, backward of the
  trainable path only (activation gradients through the frozen backbone from the top down to the
  first layer with LoRA adapters, weight gradients of the fully trained head), no recompute, no
  padding, no GradCache re-run. With L layers of width d, KV width d_kv, FFN width f, sequence
  length s, N = 2 d^2 + 2 d d_kv + 3 d f weights per layer:
      backbone, per token   2 N L (forward) + 2 N L_bwd (activation gradients; frozen weights)
      backbone attention    4 L d s^2 per sequence forward (QK^T, AV), 8 L_bwd d s^2 backward
      head, per pooled token  the pooling type's ``flops_per_token`` (forward + both gradients): only
                            the tokens pooled into the embedding (not BOS, not the instruction prefix)
  where L_bwd = L - lora.first_layer (0 without LoRA: only the head trains). LoRA's own FLOPs
  (rank 16: ~1% of the layer) are left out.
- ``executed_flops``: what the step executes, ``torch.utils.flop_counter.FlopCounterMode`` over one
  step (matmuls and attention kernels, forward and backward, both GradCache passes, any recompute,
  padding included; CPU's flash-attention kernels registered below). ``executed_flops /
  model_flops`` is the waste factor: ~1.5 for GradCache (one extra forward) with no padding.
- ``aten_calls``: operators the step dispatches (every aten call a :class:`StepCounter` sees,
  views included): on a GPU each non-view call is at least one kernel launch.
- ``host_syncs``: reads of a tensor's value by the host during the step: ``.item()``/``int()``/
  ``bool()`` (``aten._local_scalar_dense``), operators whose output shape depends on values
  (``nonzero``, ``masked_select``, ``unique``...), ``aten.equal``, and device-to-host copies. On a
  GPU each is a device->host synchronisation when the tensor lives on the device. On CPU every such
  read is counted, the batch's included (training moves the batch to the GPU, so there they are
  syncs), except reads of tensors a GPU run keeps on the host by design (``host_tensors``: AdamW's
  step counters). ``.tolist()`` of a CPU tensor does not reach the dispatcher; on a GPU that of a
  device tensor is counted as its copy to the host.
- ``nonmatmul_bytes_per_token``: bytes written by every operator other than matmuls and attention
  kernels (elementwise, norms, softmax, copies, casts, the optimizer), per real token: the memory
  traffic that fused kernels would remove; views write nothing and are not counted.
- ``step_peak_gib`` (:func:`step_peak_memory`): peak tensor memory the step allocates.
"""
from __future__ import annotations

import warnings

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from nemo_nvembed.models.pooling import pooling_type

aten = torch.ops.aten

_SYNCING = {aten._local_scalar_dense.default, aten.nonzero.default, aten.nonzero_static.default,
            aten.masked_select.default, aten._unique2.default, aten.unique_dim.default,
            aten.unique_consecutive.default, aten.equal.default, aten.is_nonzero.default,
            aten.repeat_interleave.Tensor}
_MATMUL_NAMES = ("mm", "addmm", "bmm", "baddbmm", "addbmm", "_addmm_activation", "matmul", "_scaled_mm", "_int_mm",
                 "convolution", "convolution_backward")
_NO_WRITE = {aten._unsafe_view.default, aten.lift_fresh.default}  # not views by schema, yet copy nothing


def _is_matmul(func) -> bool:
    name = func._opname
    return name in _MATMUL_NAMES or "attention" in name  # SDPA's kernels, forward and backward


def _register_cpu_attention_flops() -> None:
    """FlopCounterMode knows the CUDA SDPA kernels, not CPU's flash kernel: the same formulas for it."""
    from torch.utils import flop_counter as fc

    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is None or fwd in fc.flop_registry:
        return

    @fc.register_flop_formula(fwd)
    def _fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

    if bwd is not None:
        @fc.register_flop_formula(bwd)
        def _bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


_register_cpu_attention_flops()


def model_flops(model_cfg, lengths: list[int], pooled: list[int] | None = None) -> float:
    """FLOPs one training step needs for sequences of these real lengths, ``pooled`` of whose tokens
    (default: all) are pooled into the embedding (the module docstring's definition)."""
    b, p = model_cfg.backbone, model_cfg.pooling
    L, d, f = b.num_layers, b.hidden_size, b.ffn_hidden_size
    d_kv = d // b.num_attention_heads * b.num_query_groups
    n = 2 * d * d + 2 * d * d_kv + 3 * d * f  # weights per layer
    l_bwd = L - model_cfg.lora.first_layer if model_cfg.lora.enabled else 0
    head = pooling_type(p.type)
    total = 0.0
    for s, m in zip(lengths, pooled or lengths):
        total += s * 2 * n * (L + l_bwd) + 4 * d * s * s * (L + 2 * l_bwd) + m * head.flops_per_token(p, d, s)
    return float(total)


def pooled_lengths(batch) -> list[int]:
    """Pooled tokens per sequence of a ContrastiveBatch, queries then documents (``model_flops``'s order)."""
    return [n - p for b in (batch.queries, batch.docs) for n, p in zip(b.lengths, b.pool_starts)]


class StepCounter(TorchDispatchMode):
    """Counts aten calls, host syncs and bytes written by non-matmul operators (see the module docstring)."""

    def __init__(self, host_tensors=()):
        super().__init__()
        self.aten_calls = self.host_syncs = self.nonmatmul_bytes = 0
        self.host = {t.data_ptr() for t in host_tensors}  # reads of these are not syncs

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.aten_calls += 1
        if func in _SYNCING and not (args and isinstance(args[0], torch.Tensor) and args[0].data_ptr() in self.host):
            self.host_syncs += 1
        elif func in (aten._to_copy.default, aten.copy_.default) and _device_to_host(func, args, kwargs):
            self.host_syncs += 1
        if not func.is_view and func not in _NO_WRITE and not _is_matmul(func):
            self.nonmatmul_bytes += _bytes(out)
        return out


def _device_to_host(func, args, kwargs) -> bool:
    src = args[1] if func is aten.copy_.default else args[0]
    dst_cpu = args[0].device.type == "cpu" if func is aten.copy_.default else kwargs.get("device", src.device).type == "cpu"
    return src.device.type != "cpu" and dst_cpu


def _bytes(out) -> int:
    if isinstance(out, torch.Tensor):
        return out.numel() * out.element_size()
    if isinstance(out, (list, tuple)):
        return sum(_bytes(o) for o in out)
    return 0


def optimizer_host_tensors(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The step counters of ``opt``'s state: on the host in a GPU run too (not ``capturable``), so
    AdamW's ``step.item()`` per parameter is no device sync."""
    return [s["step"] for s in opt.state.values() if isinstance(s.get("step"), torch.Tensor) and s["step"].device.type == "cpu"]


def count_step(step, device: str, host_tensors=()) -> dict:
    """Run ``step`` once under the counters; -> executed_flops, aten_calls, host_syncs, nonmatmul_bytes
    (and on CUDA ``host_syncs_cuda``: the synchronisations torch's sync debug mode reports)."""
    flops = FlopCounterMode(display=False)
    counter = StepCounter(host_tensors)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
        try:
            with flops, counter:
                step()
        finally:
            if device == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    out = {"executed_flops": float(flops.get_total_flops()), "aten_calls": counter.aten_calls,
           "host_syncs": counter.host_syncs, "nonmatmul_bytes": counter.nonmatmul_bytes}
    if device == "cuda":
        out["host_syncs_cuda"] = sum("synchroniz" in str(w.message) for w in caught)
    return out


def step_peak_memory(step, device: str) -> float:
    """Peak tensor memory one step allocates above what was live before it, GiB.

    GPU: the caching allocator's peak. CPU: the profiler's record of every allocation and free of
    PyTorch's CPU allocator (one extra, untimed step), summed in time order. Unlike peak RSS this
    leaves out the matmul library's per-shape kernel cache (oneDNN keeps ~0.6 MB per distinct bf16
    GEMM shape, measured; GradCache's many chunk lengths create many shapes) and freed heap
    pages the C allocator keeps: it is the memory that batch size, chunking and recompute govern.
    """
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**30
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:  # allocations positive, frees negative
        live += nbytes
        peak = max(peak, live)
    return peak / 2**30
