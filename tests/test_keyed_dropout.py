"""Keyed dropout's fast paths against the first implementation (kept below as the reference), CPU.

The masks must be the first implementation's bit for bit: a run resumed across this change, and
every TP x DP layout, draws what it drew before. The compiled (CUDA) function is checked on CPU
through inductor's C++ backend; on a GPU the CUDA test runs it for real.
"""
from __future__ import annotations

import shutil

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nemo_nvembed.models import keyed_dropout as kd

# ----------------------------------------------------------------- reference (the first implementation)
_M32, _MUL = 0xFFFFFFFF, 0x45D9F3B


def ref_mix32(h):
    h = h ^ (h >> 16)
    h = (h * _MUL) & _M32
    h = h ^ (h >> 16)
    h = (h * _MUL) & _M32
    return h ^ (h >> 16)


def ref_key_of(*parts):
    h = torch.tensor(0x9E3779B9, dtype=torch.int64)
    for x in parts:
        h = ref_mix32(h ^ (torch.tensor(int(x), dtype=torch.int64) & _M32))
    return int(h)


def ref_keep(keys, s, f, p, salt, feature_offset=0):
    """bool [s, b, f], int64 arithmetic on values in [0, 2**32)."""
    keys = keys.to(torch.int64) & _M32
    seq = ref_mix32(ref_mix32(keys ^ salt) ^ 0x27D4EB2F)  # [b]
    pos = ref_mix32(torch.arange(s, dtype=torch.int64) + 0x632BE5AB)  # [s]
    feat = ref_mix32(torch.arange(feature_offset, feature_offset + f, dtype=torch.int64) + 0x85157AF5)
    row = ref_mix32(pos[:, None] ^ seq[None, :])  # [s, b]
    return ref_mix32(row[:, :, None] ^ feat[None, None, :]) >= int(p * 2**32)  # [s, b, f]


def ref_dropout(x, keys, p, salt, feature_offset=0):
    s, b, f = x.shape
    return x * ref_keep(keys, s, f, p, salt, feature_offset).to(x.dtype) / (1.0 - p)


# --------------------------------------------------------------------------------------------- cases
EDGE_KEYS = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 0x9E3779B9]
EDGE_SALTS = [0, 1, 2**31, 2**32 - 1, kd.salt_of("decoder.layers.0.self_attention.linear_qkv")]


def cases(n=40, seed=0):
    """(s, b, f, keys, salt, p, feature_offset): random shapes and ids, edge values included."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        s, b, f = (int(torch.randint(1, hi, (1,), generator=g)) for hi in (70, 9, 200))
        keys = torch.randint(0, 2**32, (b,), generator=g, dtype=torch.int64)
        keys[0] = EDGE_KEYS[i % len(EDGE_KEYS)]
        salt = EDGE_SALTS[i % len(EDGE_SALTS)] if i % 2 else int(torch.randint(0, 2**32, (1,), generator=g))
        p = [0.1, 0.5, 0.9, 1e-9, 0.999999, 0.25][i % 6]
        offset = [0, f, 7 * f, 2**20, 3][i % 5]
        out.append((s, b, f, keys, salt, p, offset))
    return out


def test_key_of_and_mix32_equal_the_reference():
    for parts in [(0,), (1234, 5, 0), (2**32 - 1, 2**40, -3), (7, 99, 1)]:
        assert kd.key_of(*parts) == ref_key_of(*parts)
    h = torch.randint(0, 2**32, (1000,), dtype=torch.int64)
    assert torch.equal(kd.mix32(h), ref_mix32(h))
    assert [kd._mix32_int(int(v)) for v in h[:50]] == ref_mix32(h[:50]).tolist()


def test_masks_equal_the_reference_bit_for_bit():
    for s, b, f, keys, salt, p, offset in cases():
        with kd.sequence_keys(keys):
            got = kd.keep_mask(s, f, p, salt, offset)
        ref = ref_keep(keys, s, f, p, salt, offset)
        assert got.dtype == torch.bool and torch.equal(got, ref), (s, b, f, salt, p, offset)
    # an adapter input of the benchmark's size: 2048 tokens x 576 features
    keys = torch.randint(0, 2**32, (8,), dtype=torch.int64)
    with kd.sequence_keys(keys):
        assert torch.equal(kd.keep_mask(256, 576, 0.1, 77), ref_keep(keys, 256, 576, 0.1, 77))


def test_tp_slices_are_slices_of_the_full_mask():
    """A row-parallel adapter's rank r holds features [r F/tp, (r+1) F/tp): its mask is that slice."""
    keys = torch.tensor([5, 2**32 - 1, 0, 123456789])
    s, F, salt = 13, 96, kd.salt_of("decoder.layers.1.mlp.linear_fc2")
    with kd.sequence_keys(keys):
        full = kd.keep_mask(s, F, 0.3, salt)
        for tp in (2, 3, 4):
            w = F // tp
            parts = [kd.keep_mask(s, w, 0.3, salt, feature_offset=r * w) for r in range(tp)]
            assert torch.equal(torch.cat(parts, dim=-1), full)
    assert torch.equal(full, ref_keep(keys, s, F, 0.3, salt))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_outputs_and_gradients_equal_the_reference(dtype):
    for s, b, f, keys, salt, p, offset in cases(12, seed=1):
        x = torch.randn(s, b, f, dtype=dtype, requires_grad=True)
        g = torch.randn(s, b, f, dtype=dtype)
        with kd.sequence_keys(keys):
            y = kd.dropout(x, p, True, salt, offset)
        (gx,) = torch.autograd.grad(y, x, g)
        xr = x.detach().clone().requires_grad_()
        yr = ref_dropout(xr, keys, p, salt, offset)
        (gr,) = torch.autograd.grad(yr, xr, g)
        assert torch.equal(y, yr) and torch.equal(gx, gr), (s, b, f, p)


def test_the_mask_is_recomputed_not_saved():
    """Only ids are saved for backward ([s, b, 1] row hashes and [f] feature hashes), never [s, b, f]."""
    s, b, f = 32, 4, 64
    saved = []
    x = torch.randn(s, b, f, requires_grad=True)
    with kd.sequence_keys(torch.arange(b)), torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t.numel()) or t, lambda t: t):
        y = kd.dropout(x, 0.5, True, 3)
    assert saved and max(saved) <= s * b, saved
    y.sum().backward()  # backward outside the keys' block: it needs only what was saved
    with kd.sequence_keys(torch.arange(b)):
        assert torch.equal(x.grad, kd.keep_mask(s, f, 0.5, 3).float() / 0.5)


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls, self.big_int64 = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.calls += 1
        if isinstance(out, torch.Tensor) and out.dtype == torch.int64 and out.numel() > 10_000:
            self.big_int64 += 1
        return out


def test_cost_on_cpu():
    """A realistic adapter input (2048 tokens x 576 features): few aten calls, no int64 per element.
    The first implementation: 77 calls forward (12 of them int64 ops per element) and 3 in backward."""
    s, b, f = 256, 8, 576
    x, g = torch.randn(s, b, f, requires_grad=True), torch.randn(s, b, f)
    with kd.sequence_keys(torch.arange(b)):
        kd.dropout(x, 0.1, True, 11)  # the position and feature hashes are cached from the first call
        with _Ops() as fwd:
            y = kd.dropout(x, 0.1, True, 11)
    with _Ops() as bwd:
        y.backward(g)
    assert fwd.big_int64 == bwd.big_int64 == 0
    assert fwd.calls <= 24 and bwd.calls <= 15, (fwd.calls, bwd.calls)  # measured: 23 and 14


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor's CPU backend needs a C++ compiler")
def test_compiled_kernel_equals_the_eager_path():
    """The function CUDA runs compiled (one kernel), compiled here by inductor's C++ backend: the same
    masks and outputs as the reference for several shapes under one dynamic-shape compilation."""
    torch._dynamo.reset()
    for s, b, f, keys, salt, p, offset in cases(6, seed=2):
        x = torch.randn(s, b, f, requires_grad=True)
        ks = kd._Keys(keys)
        y = kd._KeyedDropout.apply(x, ks.on(x.device), kd._ids(salt, offset, x.device), kd._threshold(p), p, True)
        (gx,) = torch.autograd.grad(y, x, torch.ones_like(x))
        keep = ref_keep(keys, s, f, p, salt, offset)
        assert torch.equal(y != 0, keep) and torch.equal(gx != 0, keep), (s, b, f, p)
        torch.testing.assert_close(y, ref_dropout(x.detach(), keys, p, salt, offset), rtol=1e-6, atol=0)
    # one operator per direction, also under a TorchDispatchMode (where torch.compile itself cannot run)
    from nemo_nvembed.benchmark.counters import StepCounter

    with StepCounter() as counted:
        y = kd._KeyedDropout.apply(x, ks.on(x.device), kd._ids(salt, offset, x.device), kd._threshold(p), p, True)
        (gx,) = torch.autograd.grad(y, x, torch.ones_like(x))
    assert torch.equal(gx != 0, keep)
    assert counted.aten_calls == 3, counted.aten_calls  # forward, ones_like, backward


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fused_dropout_equals_the_reference():
    for s, b, f, keys, salt, p, offset in cases(8, seed=3):
        x = torch.randn(s, b, f, device="cuda", requires_grad=True)
        with kd.sequence_keys(keys):
            y = kd.dropout(x, p, True, salt, offset)
        assert not kd._fused_failed, "the compiled kernel failed on CUDA"
        (gx,) = torch.autograd.grad(y, x, torch.ones_like(x))
        keep = ref_keep(keys, s, f, p, salt, offset)
        assert torch.equal((y != 0).cpu(), keep) and torch.equal((gx != 0).cpu(), keep)


def _packed_case(seed: int):
    """A pack of sequences (lengths, keys) and the [t, 1, f] masks padding gives each of its tokens."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 12, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g).tolist()
    keys = torch.randint(0, 2**32, (len(lengths),), generator=g, dtype=torch.int64)
    keys[0] = EDGE_KEYS[seed % len(EDGE_KEYS)]
    segments = torch.tensor([i for i, n in enumerate(lengths) for _ in range(n)])
    positions = torch.tensor([j for n in lengths for j in range(n)])
    return lengths, keys, segments, positions


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor's CPU backend needs a C++ compiler")
def test_compiled_packed_kernel_equals_the_padded_masks():
    """The packed kernel CUDA runs (compiled here by inductor's C++ backend): every packed token gets
    the mask its sequence's row gets padded, forward and backward, one operator per direction."""
    torch._dynamo.reset()
    f, p, salt, offset = 40, 0.3, EDGE_SALTS[4], 8
    for seed in range(4):
        lengths, keys, segments, positions = _packed_case(seed)
        ks = kd._Keys(keys, segments, positions, max(lengths))
        x = torch.randn(len(segments), 1, f, requires_grad=True)
        y = kd._KeyedDropout.apply(x, ks.tokens_on(x.device), kd._ids(salt, offset, x.device), kd._threshold(p), p, True)
        (gx,) = torch.autograd.grad(y, x, torch.ones_like(x))
        padded = ref_keep(keys, max(lengths), f, p, salt, offset)  # [s, b, f]
        keep = padded[positions, segments][:, None, :]  # [t, 1, f]
        assert torch.equal(y != 0, keep) and torch.equal(gx != 0, keep), seed
        eager = kd._KeyedDropout.apply(x, kd._row_hash(ks, salt, 0, x.device), kd._feat_hash(offset, f, x.device),
                                       kd._threshold(p), p, False)
        torch.testing.assert_close(y, eager, rtol=1e-6, atol=0)
