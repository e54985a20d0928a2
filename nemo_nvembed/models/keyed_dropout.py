"""Layout-independent dropout: each element's mask is a hash of (sequence key, position, feature).

A training step's random draws must not depend on how the global batch is laid out: how many
data-parallel ranks share it, how a rank cuts its part into chunks (GradCache, length-aware
chunking), or how a tensor-parallel rank holds a slice of the features. Otherwise TP x DP runs
and the one-process run with the whole batch would train different models. A counter-based
generator (like Philox, but keyed by what an element *is*) gives exactly that: the keep/drop
decision for element (token ``pos`` of sequence ``key``, feature ``feat`` in the full TP=1
layout) is ``hash(key, pos, feat) >= p * 2**32``, with the key salted per module (its name), so
that each dropout module draws independently, as ordinary dropout does.

The caller (:mod:`nemo_nvembed.training.chunking`) sets the keys of the sequences in the forward
with :func:`sequence_keys` (a function of seed, step, text group and the sequence's position in
the global batch). Outside such a context (an ad-hoc forward in train mode) dropout falls back
to ``torch.nn.functional.dropout``.
"""
from __future__ import annotations

import zlib
from contextlib import contextmanager

import torch

_M32 = 0xFFFFFFFF
_MUL = 0x45D9F3B  # < 2**31: products stay below 2**63 in int64
_keys: torch.Tensor | None = None  # [b] int64 in [0, 2**32): keys of the sequences being embedded


def mix32(h: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (avalanche finaliser) on int64 tensors holding values in [0, 2**32)."""
    h = h ^ (h >> 16)
    h = (h * _MUL) & _M32
    h = h ^ (h >> 16)
    h = (h * _MUL) & _M32
    return h ^ (h >> 16)


def key_of(*parts: int) -> int:
    """Combine integers into one 32-bit key."""
    h = torch.tensor(0x9E3779B9, dtype=torch.int64)
    for x in parts:
        h = mix32(h ^ (torch.tensor(int(x), dtype=torch.int64) & _M32))
    return int(h)


@contextmanager
def sequence_keys(keys: torch.Tensor):
    """Within the block, keyed dropout uses ``keys`` ([b] int64) for the b sequences of the forward."""
    global _keys
    previous, _keys = _keys, keys.to(torch.int64) & _M32
    try:
        yield
    finally:
        _keys = previous


def keep_keys_through_recompute() -> None:
    """megatron's activation recompute re-runs layers during backward, outside the caller's
    :func:`sequence_keys` block: bind the keys of the forward to the checkpointed function, so the
    recomputed forward draws the same masks (idempotent)."""
    from megatron.core import tensor_parallel

    original = tensor_parallel.checkpoint
    if getattr(original, "nvembed_keyed", False):
        return

    def checkpoint(function, distribute_saved_activations, *args):
        keys = _keys

        def run(*inner):
            global _keys
            previous, _keys = _keys, keys
            try:
                return function(*inner)
            finally:
                _keys = previous

        return original(run, distribute_saved_activations, *args)

    checkpoint.nvembed_keyed = True
    tensor_parallel.checkpoint = checkpoint


def salt_of(name: str) -> int:
    """A module's salt: a stable 32-bit hash of its name (the same on every rank and run)."""
    return zlib.crc32(name.encode())


def dropout(x: torch.Tensor, p: float, training: bool, salt: int, feature_offset: int = 0) -> torch.Tensor:
    """Dropout of ``x`` [s, b, f] (megatron's sequence-first layout) for the module with ``salt``;
    ``feature_offset``: index of this rank's first feature in the full layout (a TP slice)."""
    if not training or p == 0.0:
        return x
    if _keys is None:
        return torch.nn.functional.dropout(x, p, training=True)
    s, b, f = x.shape
    if _keys.numel() != b:
        raise RuntimeError(f"keyed dropout: {_keys.numel()} sequence keys for a batch of {b}")
    dev = x.device
    with torch.no_grad():
        seq = mix32(mix32(_keys.to(dev) ^ salt) ^ 0x27D4EB2F)  # [b]
        pos = mix32(torch.arange(s, device=dev, dtype=torch.int64) + 0x632BE5AB)  # [s]
        feat = mix32(torch.arange(feature_offset, feature_offset + f, device=dev, dtype=torch.int64) + 0x85157AF5)
        row = mix32(pos[:, None] ^ seq[None, :])  # [s, b]
        keep = mix32(row[:, :, None] ^ feat[None, None, :]) >= int(p * 2**32)  # [s, b, f]
    return x * keep.to(x.dtype) / (1.0 - p)
