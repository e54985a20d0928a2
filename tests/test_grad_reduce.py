"""The data-parallel gradient SUM in buckets (training/strategy.sum_gradients) and the fused global-norm
clipping (training/grad_clip.py) against plain references, on 2 gloo processes."""
from __future__ import annotations

import torch
from dist_utils import run_distributed


def _worker(rank, world):
    import torch.distributed as dist

    from nemo_nvembed.parallel.grad_sum import sum_gradients

    g = torch.Generator().manual_seed(rank)
    shapes = [(3, 5), (7,), (40, 3), (2, 2, 2), (11,)]  # 120 elements: alone in a bucket of 64
    params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    params[2].grad = params[2].grad.t().contiguous().t()  # a non-contiguous gradient
    expected = [p.grad.clone() for p in params]
    for e in expected:
        dist.all_reduce(e)  # the plain reference: one all-reduce per gradient
    sum_gradients(params, None, bucket_numel=64)
    return [(p.grad - e).abs().max().item() for p, e in zip(params, expected)]


def test_bucketed_gradient_sum_equals_per_tensor_all_reduce():
    for diffs in run_distributed(_worker, 2):
        assert max(diffs) == 0.0, diffs


def test_fused_clipping_equals_torch_clip_grad_norm():
    from nemo_nvembed.training.grad_clip import clip_grad_norm

    g = torch.Generator().manual_seed(0)
    ours = [torch.nn.Parameter(torch.zeros(s)) for s in [(4, 3), (9,), (2, 5)]]
    ref = [torch.nn.Parameter(torch.zeros(p.shape)) for p in ours]
    for a, b in zip(ours, ref):
        a.grad = torch.randn(a.shape, generator=g) * 3
        b.grad = a.grad.clone()
    norm = clip_grad_norm(ours, 0.5)
    ref_norm = torch.nn.utils.clip_grad_norm_(ref, 0.5)
    torch.testing.assert_close(norm, ref_norm)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad, b.grad)
