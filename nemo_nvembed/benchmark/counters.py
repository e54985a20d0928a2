"""What one training step costs, measured: the step's peak tensor memory."""
from __future__ import annotations

import torch


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
