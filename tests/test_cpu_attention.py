"""CPU training's written-out attention (models/sdpa_attention.attend) against a float64 reference and
SDPA's flash kernel: the same outputs and gradients within bf16's rounding, and the kernels it keeps."""
import pytest
import torch
import torch.nn.functional as F

from nemo_nvembed.models import sdpa_attention
from nemo_nvembed.models.sdpa_attention import attend


def _inputs(n=5, heads=3, s=24, hn=16, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(0)
    q, k, v = (2 * torch.randn(n, heads, s, hn, generator=g) for _ in range(3))
    mask = torch.ones(n, 1, 1, s, dtype=torch.bool)
    for i in range(n):
        mask[i, ..., s - 3 * i:] = i == 0  # sequence i has s - 3i real keys
    return [t.to(dtype).requires_grad_() for t in (q, k, v)], mask


def _out_and_grads(fn, q, k, v, mask, probe):
    out = fn(q, k, v, mask)
    (out.double() * probe).sum().backward()
    grads = [t.grad.double().clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    return out.double().detach(), grads


def test_written_out_attention_matches_float64_as_closely_as_sdpa():
    (q, k, v), mask = _inputs()
    probe = torch.randn(q.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref_out, ref_grads = _out_and_grads(lambda *a: F.scaled_dot_product_attention(a[0], a[1], a[2], attn_mask=a[3]),
                                        *ref_in, mask, probe)
    sdpa_out, sdpa_grads = _out_and_grads(lambda *a: F.scaled_dot_product_attention(a[0], a[1], a[2], attn_mask=a[3]),
                                          q, k, v, mask, probe)
    ours_out, ours_grads = _out_and_grads(attend, q, k, v, mask, probe)
    err = lambda a, b: float((a - b).abs().max() / b.abs().max())  # noqa: E731
    assert err(ours_out, ref_out) <= max(1.5 * err(sdpa_out, ref_out), 4e-3)
    for mine, flash, ref in zip(ours_grads, sdpa_grads, ref_grads):
        assert err(mine, ref) <= max(1.5 * err(flash, ref), 8e-3)


@pytest.mark.parametrize("case", ["no_grad", "fp32", "long"])
def test_sdpa_kernel_kept_outside_cpu_low_precision_training(case, monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(sdpa_attention.F, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    s = sdpa_attention.MATH_MAX_KEYS + 1 if case == "long" else 16
    (q, k, v), mask = _inputs(n=2, s=s, dtype=torch.float32 if case == "fp32" else torch.bfloat16)
    with torch.set_grad_enabled(case != "no_grad"):
        attend(q, k, v, mask)
    assert calls == [1]
    calls.clear()
    (q, k, v), mask = _inputs(n=2, s=16)
    attend(q, k, v, mask)  # bf16, gradients, short: written out
    assert calls == []
