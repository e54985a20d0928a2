"""Host memory of a training rank: its resident size logged every step; optionally, glibc's free heap
handed back to the system every ``train.host_memory_trim_every_n_steps`` steps (default 0: never).

Why: on a CPU run the activations live in the host heap. Packed chunks (``train.chunking.packed``)
hold a different number of tokens every step, so each step asks the allocator for slightly different
sizes, and glibc's heap keeps growing. Measured on the demo-long stage 1 (2 gloo ranks,
SmolLM2-135M, 32 x (48 + 64) tokens; the larger rank's RSS sampled every 2 s, the maximum per sixth
of the run; 2026-12-06, this 2-core machine; the two rows marked * back to back, the others earlier
the same afternoon):

==============================================  =========  =====================================
allocator setting                               step       RSS over ~30 steps (GB)
==============================================  =========  =====================================
glibc, default *                                8.2 s      4.8 4.1 4.6 5.2 5.6 6.0 (10 steps);
                                                           earlier: 4.7 5.9 6.5 6.9 7.2 7.5, and
                                                           11.1 GB at step 408: OOM-killed
glibc, ``malloc_trim(0)`` every 10 steps        7.9 s      4.7 5.9 6.4 6.6 7.3 7.3
glibc, ``malloc_trim(0)`` every step            9.5 s      5.1 5.6 5.8 5.9 6.0 6.2; in a whole
                                                           demo-long run 10-14 s, 6.4-7.3 GB by
                                                           step 240 (stopped: over 2 hours)
glibc, mmap threshold fixed at 4 MiB            7.9 s      4.8 5.3 5.6 6.1 6.2 (20 steps)
glibc, mmap threshold fixed at 128 KiB          12.9 s     4.3 4.6 4.6 4.6 4.6 (flat)
glibc, ``MALLOC_ARENA_MAX=1``                   12.7 s     4.4 5.2 5.5 5.9 6.1 (20 steps)
jemalloc 5.3, its defaults *                    9.6 s      3.8 4.4 4.6 4.9 4.8 4.9 (plateau); in a
                                                6.9 s      whole fresh ``make demo-long``, steps
                                                           20-450: 2.2-3.2 GB at step end, flat
jemalloc, pages never purged                    6.9 s      4.0 5.2 7.4 8.7 10.8 14.9 (18 steps)
jemalloc, one arena, never purged               7.5 s      3.8 4.4 5.1 5.8 6.7 (9 steps)
==============================================  =========  =====================================

So training workers run on jemalloc with its defaults when it is installed
(:mod:`nemo_nvembed.training.host_allocator`); the trim stays an option for glibc. On a GPU the
activations are in the CUDA caching allocator and the host heap is small. ``host_rss_gb`` (at the
end of the step) and ``host_peak_rss_gb`` (the process's high-water mark) are logged every step, so
a growth shows in TensorBoard before the kernel's OOM killer sees it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import sys

from lightning.pytorch.callbacks import Callback

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    """This process's resident set size now (Linux ``/proc/self/statm``); None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def _malloc_trim():
    """glibc's ``malloc_trim`` or None (another libc: musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def trim_heap() -> bool:
    """Return the heap's free pages to the system now; False where the C library has no malloc_trim."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class HostMemory(Callback):
    """Logs ``host_rss_gb`` and ``host_peak_rss_gb`` after every optimizer step, then, every
    ``trim_every_n_steps`` steps (0: never), trims the heap: after the step, when its activations
    are freed."""

    def __init__(self, trim_every_n_steps: int, rank: int = 0):
        self.every = int(trim_every_n_steps)
        self._trim = _malloc_trim() if self.every else None
        self.trims = 0
        if self.every and self._trim is None and rank == 0:
            print("warning: train.host_memory_trim_every_n_steps is set, but this C library has no malloc_trim "
                  "(not glibc); the host heap is not trimmed", file=sys.stderr, flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        rss = resident_bytes()
        if rss is not None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
            for name, value in (("host_rss_gb", rss), ("host_peak_rss_gb", peak)):
                pl_module.log(name, value / 2**30, prog_bar=name == "host_rss_gb", on_step=True, on_epoch=False,
                              sync_dist=False, rank_zero_only=True)
        if self._trim is not None and trainer.global_step % self.every == 0:
            self._trim(0)
            self.trims += 1
