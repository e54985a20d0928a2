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

The hash, in uint32 arithmetic (``mix32``: xorshift 16, multiply, xorshift 16, multiply, xorshift 16):
    seq[b]  = mix32(mix32(key ^ salt) ^ 0x27D4EB2F)
    pos[s]  = mix32(s + 0x632BE5AB)
    feat[f] = mix32(offset + f + 0x85157AF5)
    keep    = mix32(mix32(pos ^ seq) ^ feat) >= p * 2**32
How it is computed (the masks are those of the first, int64, implementation bit for bit; tested):
- The xorshift ``h ^ (h >>> 16)`` is linear over xor, so the per-element hash's first xorshift is
  done on the [s, b] row hashes and the [f] feature hashes (cached per width and TP offset), and
  it is an involution, so ``xorshift(mix32(.))`` is mix32 without its last step.
- Per element, int32 with wrap-around stands in for uint32: products wrap the same, ``>>> 16`` is
  ``(h >> 16) & 0xFFFF``, and flipping the top bit turns the unsigned comparison into a signed one.
  CPU, an adapter input of 2048 tokens x 576 features, one core: 23 aten calls forward (11 in-place
  int32 ops per element, 2 to apply the mask), 2.4-2.9 ms; the first version: 77 calls, 12 of them
  int64 ops per element, 7.5-7.7 ms. Backward recomputes the mask (14 calls): forward + backward
  7.0-7.4 ms against 8.2-9.8 ms, and no [s, b, f] mask is kept (the first version kept it in fp32).
- CUDA: hash and masking are one ``torch.compile``d elementwise kernel (dynamic shapes), wrapped as one
  operator (``nvembed::keyed_dropout``; ``nvembed::keyed_dropout_packed`` for packs, each token with
  its sequence key and position); tested on CPU (inductor's C++ backend) against the eager path, used
  on CPU with ``NVEMBED_FUSED_DROPOUT=1`` (3.4 vs 7.7 ms forward + backward above). Not yet on a GPU.
- The mask is never stored: a custom autograd function saves only the ids (row hashes, or keys and
  salt) and recomputes the mask in backward.
"""
from __future__ import annotations

import functools
import os
import warnings
import zlib
from contextlib import contextmanager

import torch
from torch.autograd.function import once_differentiable

_M32 = 0xFFFFFFFF
_MUL = 0x45D9F3B  # < 2**31: products stay below 2**63 in int64, and it is an int32 constant
_SEQ, _POS, _FEAT = 0x27D4EB2F, 0x632BE5AB, 0x85157AF5
_SIGN = -(2**31)  # int32 with only the top bit set: xor-ing it maps uint32 order onto int32 order


class _Keys:
    """The keys of the sequences being embedded (int64 in [0, 2**32)), with the copies the paths use.

    Packed sequences (``segments``, ``positions``: [t] CPU int64, the sequence index and the position
    in its sequence of every token of one [t, 1, f] pack): each token's mask is the one it gets padded,
    a function of (its sequence's key, its position in the sequence, feature) only."""

    def __init__(self, keys: torch.Tensor | list[int], segments: torch.Tensor | None = None,
                 positions: torch.Tensor | None = None, max_length: int | None = None):
        self._values: list[int] | None = None
        if isinstance(keys, list):  # Python ints from the host: no tensor read ever
            self._values = [k & _M32 for k in keys]
            keys = torch.tensor(self._values, dtype=torch.int64)
        self.tensor = keys.to(torch.int64) & _M32  # [b] (packed: [n] sequences)
        self.segments, self.positions = segments, positions
        self.max_length = max_length  # packed: the longest sequence (host int); None: read from positions
        self._on: dict[torch.device, torch.Tensor] = {}
        self._packed_rows: dict[tuple, torch.Tensor] = {}
        self._pos_h: torch.Tensor | None = None

    @property
    def packed(self) -> bool:
        return self.segments is not None

    def position_hash(self) -> torch.Tensor:
        """[t] int32 mix32(position + _POS) of every packed token, on the host: once per forward, shared by
        every adapter (each adds only its own sequence hash)."""
        if self._pos_h is None:
            longest = self.max_length if self.max_length is not None else int(self.positions.max()) + 1
            table = _pos_hash(longest, torch.device("cpu")).view(-1)
            self._pos_h = table[self.positions]
        return self._pos_h

    def values(self) -> list[int]:
        """As Python ints (CPU path; the chunking passes CPU keys, so no device sync)."""
        if self._values is None:
            self._values = self.tensor.tolist()
        return self._values

    def tokens_on(self, device: torch.device) -> torch.Tensor:
        """Packed: [2, t] int32 (each token's sequence key bits, its position) on ``device``, once per forward."""
        if ("tokens", device) not in self._on:
            k = self.tensor[self.segments]
            k = torch.where(k >= 2**31, k - 2**32, k)
            self._on[("tokens", device)] = torch.stack([k, self.positions]).to(device=device, dtype=torch.int32)
        return self._on[("tokens", device)]

    def on(self, device: torch.device) -> torch.Tensor:
        """[b] int32 holding the uint32 bits on ``device``: one copy per forward, not per adapter call."""
        if device not in self._on:
            k = self.tensor
            self._on[device] = torch.where(k >= 2**31, k - 2**32, k).to(device=device, dtype=torch.int32)
        return self._on[device]


_keys: _Keys | None = None


def mix32(h: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (avalanche finaliser) on int64 tensors holding values in [0, 2**32)."""
    h = h ^ (h >> 16)
    h = (h * _MUL) & _M32
    h = h ^ (h >> 16)
    h = (h * _MUL) & _M32
    return h ^ (h >> 16)


def _mix32_int(h: int) -> int:
    """:func:`mix32` of one Python int."""
    h ^= h >> 16
    h = (h * _MUL) & _M32
    h ^= h >> 16
    h = (h * _MUL) & _M32
    return h ^ (h >> 16)


def mix32_int(h: int) -> int:
    """:func:`mix32` of one Python int in [0, 2**32) (host-side keys: no tensor)."""
    return _mix32_int(h & _M32)


def _as_int32(v: int) -> int:
    """The int32 with the bits of uint32 ``v``."""
    return v - 2**32 if v >= 2**31 else v


def key_of(*parts: int) -> int:
    """Combine integers into one 32-bit key."""
    h = 0x9E3779B9
    for x in parts:
        h = _mix32_int(h ^ (int(x) & _M32))
    return h


@contextmanager
def sequence_keys(keys: torch.Tensor | list[int], segments: torch.Tensor | None = None,
                  positions: torch.Tensor | None = None, max_length: int | None = None):
    """Within the block, keyed dropout uses ``keys`` ([b] int64, or b Python ints) for the b sequences
    of the forward; packed ([t, 1, f] inputs): ``segments`` and ``positions`` ([t]) place every token
    and ``max_length`` is the longest sequence (see :class:`_Keys`)."""
    global _keys
    previous, _keys = _keys, _Keys(keys, segments, positions, max_length)
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


def _threshold(p: float) -> int:
    """``p * 2**32`` as the signed bound of the top-bit-flipped hash (p < 1: at most 2**31 - 1)."""
    return int(p * 2**32) + _SIGN


# ------------------------------------------------------------------------- eager path (CPU)

def _xorshift_(h: torch.Tensor, tmp: torch.Tensor | None = None) -> torch.Tensor:
    """``h ^= h >>> 16`` in place on int32 holding uint32 bits (3 ops); returns the scratch tensor."""
    tmp = h >> 16 if tmp is None else torch.bitwise_right_shift(h, 16, out=tmp)  # arithmetic shift ...
    tmp.bitwise_and_(0xFFFF)  # ... made logical
    h.bitwise_xor_(tmp)
    return tmp


def _mix_inner_(h: torch.Tensor) -> torch.Tensor:
    """mix32 without its first and last xorshift, in place on int32: multiply, xorshift, multiply."""
    h.mul_(_MUL)  # int32 products wrap as uint32 ones do
    _xorshift_(h)
    return h.mul_(_MUL)


@functools.lru_cache(maxsize=1024)
def _pos_hash(s: int, device: torch.device) -> torch.Tensor:
    """[s, 1, 1] int32: mix32(position + _POS)."""
    h = mix32(torch.arange(s, dtype=torch.int64) + _POS)
    return torch.where(h >= 2**31, h - 2**32, h).to(device=device, dtype=torch.int32).view(s, 1, 1)


@functools.lru_cache(maxsize=256)
def _feat_hash(offset: int, f: int, device: torch.device) -> torch.Tensor:
    """[f] int32: xorshift(mix32(feature + _FEAT)), i.e. mix32 without its last xorshift."""
    h = mix32(torch.arange(offset, offset + f, dtype=torch.int64) + _FEAT)
    h = h ^ (h >> 16)  # the per-element hash's first xorshift, done here (linear over xor)
    return torch.where(h >= 2**31, h - 2**32, h).to(device=device, dtype=torch.int32)


def _row_hash(keys: _Keys, salt: int, s: int, device: torch.device) -> torch.Tensor:
    """[s, b, 1] int32: xorshift(mix32(pos ^ seq)), the row hash with the per-element first xorshift."""
    seq = [_as_int32(_mix32_int(_mix32_int(k ^ salt) ^ _SEQ)) for k in keys.values()]  # b Python ints
    if keys.packed:  # [t, 1, 1]: each token's own (sequence, position)
        cache = (salt, device)
        if cache not in keys._packed_rows:
            h = torch.bitwise_xor(keys.position_hash(), torch.tensor(seq, dtype=torch.int32)[keys.segments]).view(-1, 1, 1)
            _xorshift_(h)
            keys._packed_rows[cache] = _mix_inner_(h).to(device)
        return keys._packed_rows[cache]
    h = torch.bitwise_xor(_pos_hash(s, device), torch.tensor([[[v] for v in seq]], dtype=torch.int32, device=device))
    _xorshift_(h)
    return _mix_inner_(h)  # its last xorshift cancels the per-element first one (an involution)


def _keep(row: torch.Tensor, feat: torch.Tensor, thr: int) -> torch.Tensor:
    """bool [s, b, f]: mix32(row ^ feat) >= p * 2**32, from :func:`_row_hash` [s, b, 1] and :func:`_feat_hash` [f]."""
    h = torch.bitwise_xor(row, feat)  # [s, b, f] int32: the first xorshift of mix32 already applied
    _mix_inner_(h)
    _xorshift_(h)
    return h.bitwise_xor_(_SIGN) >= thr  # unsigned comparison as a signed one


def _apply_eager(t: torch.Tensor, row: torch.Tensor, feat: torch.Tensor, thr: int, p: float) -> torch.Tensor:
    return (t * _keep(row, feat, thr)).div_(1.0 - p)  # the same rounding as t * keep.to(t.dtype) / (1 - p)


# -------------------------------------------------------------------- fused path (CUDA; CPU on request)

def _mix32_i32(h: torch.Tensor) -> torch.Tensor:
    """mix32 on int32 holding uint32 bits (functional: the compiler fuses it)."""
    h = h ^ ((h >> 16) & 0xFFFF)
    h = h * _MUL
    h = h ^ ((h >> 16) & 0xFFFF)
    h = h * _MUL
    return h ^ ((h >> 16) & 0xFFFF)


def _apply_fused(t: torch.Tensor, keys: torch.Tensor, ids: torch.Tensor, thr: int, p: float) -> torch.Tensor:
    """``t * keep / (1 - p)`` with the whole hash per element; keys [b] and ids [salt, offset] int32.
    Written to be compiled into one kernel (:func:`_compiled`)."""
    s, b, f = t.shape
    seq = _mix32_i32(_mix32_i32(keys ^ ids[0]) ^ _SEQ)  # [b]
    pos = _mix32_i32(torch.arange(s, device=t.device, dtype=torch.int32) + _POS)  # [s]
    feat = _mix32_i32(torch.arange(f, device=t.device, dtype=torch.int32) + ids[1] + _as_int32(_FEAT))  # [f]
    row = _mix32_i32(pos[:, None] ^ seq[None, :])  # [s, b]
    keep = (_mix32_i32(row[:, :, None] ^ feat) ^ _SIGN) >= thr  # [s, b, f]
    return t * keep / (1.0 - p)


def _apply_fused_packed(t: torch.Tensor, tokens: torch.Tensor, ids: torch.Tensor, thr: int, p: float) -> torch.Tensor:
    """Packed ([t, 1, f]): ``tokens`` [2, t] int32 holds each token's sequence key and its position in
    its sequence, so every element gets the mask it gets padded. One kernel when compiled."""
    n, _, f = t.shape
    seq = _mix32_i32(_mix32_i32(tokens[0] ^ ids[0]) ^ _SEQ)  # [t]
    pos = _mix32_i32(tokens[1] + _POS)  # [t]
    feat = _mix32_i32(torch.arange(f, device=t.device, dtype=torch.int32) + ids[1] + _as_int32(_FEAT))  # [f]
    row = _mix32_i32(pos ^ seq)  # [t]
    keep = (_mix32_i32(row[:, None, None] ^ feat) ^ _SIGN) >= thr  # [t, 1, f]
    return t * keep / (1.0 - p)


@functools.lru_cache(maxsize=2)
def _compiled(packed: bool = False):
    return torch.compile(_apply_fused_packed if packed else _apply_fused, dynamic=True, fullgraph=True)


@torch.library.custom_op("nvembed::keyed_dropout", mutates_args=())
def fused_op(t: torch.Tensor, keys: torch.Tensor, ids: torch.Tensor, thr: int, p: float) -> torch.Tensor:
    """:func:`_apply_fused`, compiled, as one operator: the dispatcher (and a TorchDispatchMode such as
    the benchmark's counters, under which torch.compile cannot run) sees one call, as a GPU runs one kernel."""
    return _compiled()(t.detach(), keys, ids, thr, p)  # detached: no recompilation per requires_grad


@fused_op.register_fake
def _(t, keys, ids, thr, p):
    return torch.empty_like(t)


@torch.library.custom_op("nvembed::keyed_dropout_packed", mutates_args=())
def fused_packed_op(t: torch.Tensor, tokens: torch.Tensor, ids: torch.Tensor, thr: int, p: float) -> torch.Tensor:
    """:func:`_apply_fused_packed`, compiled, as one operator."""
    return _compiled(True)(t.detach(), tokens, ids, thr, p)


@fused_packed_op.register_fake
def _(t, tokens, ids, thr, p):
    return torch.empty_like(t)


_fused_failed = False


@functools.lru_cache(maxsize=4096)
def _ids(salt: int, offset: int, device: torch.device) -> torch.Tensor:
    """[2] int32 (salt, feature offset) on ``device``, made once per adapter (tensors: no recompilation per salt)."""
    return torch.tensor([_as_int32(salt), offset], dtype=torch.int32, device=device)


# --------------------------------------------------------------------------------- autograd

class _KeyedDropout(torch.autograd.Function):
    """Saves the ids the mask is a function of (``a``, ``b``), never the mask; backward recomputes it."""

    @staticmethod
    def forward(ctx, x, a, b, thr, p, fused):
        ctx.save_for_backward(a, b)
        ctx.thr, ctx.p, ctx.fused = thr, p, fused
        return _run(x, a, b, thr, p, fused)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        return _run(grad, a, b, ctx.thr, ctx.p, ctx.fused), None, None, None, None, None


def _run(t, a, b, thr, p, fused):
    if fused:  # a: keys [b], or packed [2, t] (sequence key and position per token)
        return fused_packed_op(t, a, b, thr, p) if a.dim() == 2 else fused_op(t, a, b, thr, p)
    return _apply_eager(t, a, b, thr, p)


def _use_fused(x: torch.Tensor) -> bool:
    """The compiled kernel on CUDA; on CPU too when ``NVEMBED_FUSED_DROPOUT=1`` (inductor's C++ backend:
    ~2x faster than the eager ops, a few seconds to compile once per process; the benchmark sets it so
    its counters see what a GPU runs). ``NVEMBED_FUSED_DROPOUT=0``: the eager path everywhere."""
    if _fused_failed:
        return False
    mode = os.environ.get("NVEMBED_FUSED_DROPOUT", "auto")
    return mode == "1" or (mode == "auto" and x.is_cuda)


def keep_mask(s: int, f: int, p: float, salt: int, feature_offset: int = 0,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """bool [s, b, f]: the keep mask of the current :func:`sequence_keys` (the eager path; for tests and inspection)."""
    if _keys is None:
        raise RuntimeError("keep_mask needs sequence_keys")
    device = torch.device(device)
    return _keep(_row_hash(_keys, salt, s, device), _feat_hash(feature_offset, f, device), _threshold(p))


def dropout(x: torch.Tensor, p: float, training: bool, salt: int, feature_offset: int = 0) -> torch.Tensor:
    """Dropout of ``x`` [s, b, f] (megatron's sequence-first layout) for the module with ``salt``;
    ``feature_offset``: index of this rank's first feature in the full layout (a TP slice)."""
    global _fused_failed
    if not training or p == 0.0:
        return x
    if _keys is None:
        return torch.nn.functional.dropout(x, p, training=True)
    if not 0.0 < p < 1.0:
        raise ValueError(f"keyed dropout: p must be in [0, 1), got {p}")
    s, b, f = x.shape
    if _keys.packed:
        if b != 1 or s != _keys.segments.numel():
            raise RuntimeError(f"keyed dropout: a pack of {_keys.segments.numel()} tokens, input [{s}, {b}, {f}]")
    elif _keys.tensor.numel() != b:
        raise RuntimeError(f"keyed dropout: {_keys.tensor.numel()} sequence keys for a batch of {b}")
    thr = _threshold(p)
    if _use_fused(x):
        try:
            a = _keys.tokens_on(x.device) if _keys.packed else _keys.on(x.device)
            return _KeyedDropout.apply(x, a, _ids(salt, feature_offset, x.device), thr, p, True)
        except Exception as e:  # noqa: BLE001 - a compiler problem must not stop training: the eager path is exact too
            _fused_failed = True
            warnings.warn(f"keyed dropout: the compiled kernel failed ({type(e).__name__}: {e}); using the eager path")
    row, feat = _row_hash(_keys, salt, s, x.device), _feat_hash(feature_offset, f, x.device)
    return _KeyedDropout.apply(x, row, feat, thr, p, False)
