"""The host-memory callback (nemo_nvembed/training/host_memory.py): glibc's trim hands a fragmented
heap's free pages back (an option for glibc; README "When things go wrong"), and the callback trims
on its schedule and logs host_rss_gb."""
from __future__ import annotations

import gc
import platform

import pytest
import torch

from nemo_nvembed.training.host_memory import HostMemory, resident_bytes, trim_heap

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")


@glibc
def test_trim_returns_a_fragmented_heap_to_the_system():
    # 4,000 blocks of 64 KiB (under glibc's mmap threshold: they live in the heap), every 16th kept:
    # the kept ones pin the heap's top, so free() alone cannot shrink it; malloc_trim releases the
    # free pages between them.
    blocks = [torch.ones(16 * 1024) for _ in range(4000)]
    kept = blocks[::16]
    del blocks
    gc.collect()
    before = resident_bytes()
    assert trim_heap()
    after = resident_bytes()
    assert before - after > 100 * 2**20, (before, after)  # ~234 MiB of the 250 MiB were free
    assert sum(float(t[0]) for t in kept) == len(kept)


class _Module:
    def __init__(self):
        self.logged = []

    def log(self, name, value, **kw):
        self.logged.append((name, value))


class _Trainer:
    global_step = 0


@glibc
def test_the_callback_trims_every_n_steps_and_logs_the_rss():
    cb, module, trainer = HostMemory(3), _Module(), _Trainer()
    for step in range(1, 8):
        trainer.global_step = step
        cb.on_train_batch_end(trainer, module, None, None, step - 1)
    assert cb.trims == 2  # steps 3 and 6
    assert [n for n, _ in module.logged] == ["host_rss_gb", "host_peak_rss_gb"] * 7
    assert all(0 < v < 1024 for _, v in module.logged)
    off = HostMemory(0)
    off.on_train_batch_end(trainer, _Module(), None, None, 0)
    assert off.trims == 0
