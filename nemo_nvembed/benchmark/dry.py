"""``python -m nemo_nvembed.bench --dry``: the step's cost counters at any shape, without running it.

Our step runs on PyTorch's meta device: every operator is dispatched with shapes and no data, so
FLOPs (``FlopCounterMode``), aten calls, host syncs and bytes written are those of the real step, at
the paper's shapes (Mistral-7B width, 32 layers, 128 x 8 sequences) in seconds on a laptop. What a
meta run cannot do, and how it is counted:
- values: the non-finite decision (the step's one ``.item()``) is answered "finite" and counted as
  the 1 host sync it is;
- autocast does not act on meta tensors. With ``precision`` bf16 (the stage configs' bf16-mixed and
  ``frozen_weights_bf16``) every parameter is held in bf16 instead, so every activation is bf16 as
  under autocast: the bytes written are the bf16 step's. Autocast's own casts (of the fp32 LoRA and head
  weights, into its fp32 ops) are missing from ``aten_calls`` (measured on the real SmolLM2 step: ~5% of
  its calls are ``_to_copy``); FLOPs, syncs and the chunk plan do not depend on the dtype;
- ``device`` "cuda" (the default; what the MFU bound is for): meta tensors take the CUDA path where
  ours differs by device, i.e. packed attention is one variable-length flash-attention call per
  layer (``torch.nn.attention.varlen``, which has a meta kernel; FlopCounterMode counts it at the
  longest sequence's length, an upper bound), not the CPU's gathered length groups. "cpu": the
  CPU path, to compare with a real CPU step (tests/test_bench_counters.py);
- no optimizer step (AdamW over LoRA and the head: a few foreach calls).
From the counters it derives what bounds MFU on a GPU of ``peak`` TFLOP/s and ``hbm`` TB/s: the FLOPs
waste (model / executed); the executed FLOPs' time at peak plus the non-matmul bytes' time at full
bandwidth; and the host's launch time (``aten_calls`` x ``host_us_per_call``, the eager dispatch cost
per operator, ~10 us).
"""
from __future__ import annotations

import os

import torch

from nemo_nvembed.benchmark.counters import count_step, model_flops, pooled_lengths


def dry_worker(spec: dict, cfg, registry, exs, text, tcfg, batch) -> dict:
    """Counters of one training step of ``spec`` on the meta device (the module docstring)."""
    from nemo_nvembed.models import sdpa_attention
    from nemo_nvembed.models.network import NVEmbedNetwork
    from nemo_nvembed.training import objective as objective_module

    os.environ["NVEMBED_FUSED_DROPOUT"] = "1" if spec.get("fused_dropout", True) else "auto"
    path = spec.get("dry_device", "cuda")
    sdpa_attention.META_RUNS_CUDA_PATH = path == "cuda"
    with torch.device("meta"):
        model = NVEmbedNetwork(cfg)
    dtype = torch.bfloat16 if spec.get("precision", "fp32") == "bf16" else torch.float32
    model.to("meta", dtype).train()
    rope = model.backbone.rotary_pos_emb
    rope.inv_freq = rope.inv_freq.to("meta")  # a plain attribute, not a buffer: .to() leaves it on the host
    objective = objective_module.ContrastiveObjective(tcfg, spec["queries"], seed=0)
    decide = objective_module.nonfinite_anywhere
    objective_module.nonfinite_anywhere = lambda loss: False  # meta tensors hold no value to read
    try:
        counts = count_step(lambda: objective.step(model, batch), "cpu")
    finally:
        objective_module.nonfinite_anywhere = decide
    counts["host_syncs"] += 1  # the non-finite decision's read, which the meta run could not make
    real, padded = objective.tokens["real"], objective.tokens["padded"]
    needed = model_flops(cfg, [*batch.queries.lengths, *batch.docs.lengths], pooled_lengths(batch))
    nonmatmul = counts.pop("nonmatmul_bytes")
    return {"system": "ours (dry)", "device": f"meta ({path} path, {dtype})", "tokens_real": real, "tokens_padded": padded,
            "padding_waste": (padded - real) / padded, "model_flops": needed, "flops_per_token": needed / real,
            **counts, "nonmatmul_bytes_per_token": nonmatmul / real, "sequences": len(exs) * (2 + spec["negatives"])}


def mfu_bounds(result: dict, peak_tflops: float, host_us_per_call: float, hbm_tbps: float) -> dict:
    """MFU bounds on a GPU of ``peak_tflops`` and ``hbm_tbps`` memory bandwidth: the FLOPs waste alone;
    then the step's time as at least the executed FLOPs at peak plus the non-matmul bytes at full
    bandwidth (elementwise kernels run between the GEMMs, not under them), and at least the host's
    launch time (launches overlap the kernels at best)."""
    compute_s = result["executed_flops"] / (peak_tflops * 1e12)
    memory_s = result["nonmatmul_bytes_per_token"] * result["tokens_real"] / (hbm_tbps * 1e12)
    launch_s = result["aten_calls"] * host_us_per_call * 1e-6
    step_s = max(compute_s + memory_s, launch_s)
    return {"peak_tflops": peak_tflops, "host_us_per_call": host_us_per_call, "hbm_tbps": hbm_tbps,
            "mfu_bound_flops": result["model_flops"] / result["executed_flops"],
            "compute_s_at_peak": compute_s, "memory_s": memory_s, "launch_s": launch_s,
            "mfu_bound": result["model_flops"] / (step_s * peak_tflops * 1e12)}
