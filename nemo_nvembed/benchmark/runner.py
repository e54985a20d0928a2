"""``python -m nemo_nvembed.bench --model smollm2_135m``: our training step vs a plain reference.

Both run the same batch of real text (the demo's retrieval data: ``--queries`` queries x (1
positive + ``--negatives`` hard negatives)) with random weights of the same shapes, after
``--warmup`` untimed steps, each system in its own process (so peak memory is its own):

- ours: megatron backbone + TP LoRA + fused latent-attention head, chunked length-aware batching
  (optionally GradCache), NV-Embed loss, AdamW;
- reference (:mod:`nemo_nvembed.benchmark.reference`): transformers model with a non-causal mask,
  PEFT LoRA, the head and loss in plain PyTorch, padding to the longest text of each group;
- reference_ckpt: the same with transformers' gradient checkpointing, what a user of the
  reference would turn on when the plain step does not fit in memory (``--systems`` picks).

Configuration: the ``train`` section of ``conf/stage1.yaml`` (``--stage``), validated by the training
schema, with the flags' overrides (``--queries``, ``--negatives``, lengths; chunking only where a
flag is given: by default the benchmark chunks exactly as the stage trains) and the stage's
``model.recompute`` (``--recompute`` overrides). :func:`bench_config` builds it; it is printed and
written to the JSON (``config``), and the workers train with exactly that.

Cost counters (:mod:`nemo_nvembed.benchmark.counters`, where each is defined), per system and step:
``model_flops``, ``executed_flops``, ``aten_calls``, ``host_syncs``, ``nonmatmul_bytes_per_token``,
counted on one extra step after the timed ones, beside ``padding_waste`` and ``mfu`` = model FLOPs per
second / peak; the peak is ``--peak-tflops`` or a measured bf16 matmul rate on this machine.
Memory: peak RSS of the worker process (GPU: peak allocated) and the step's own peak tensor
memory (:func:`~nemo_nvembed.benchmark.counters.step_peak_memory`, one more extra step). Results go
to ``--out`` as JSON for comparison across commits.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from nemo_nvembed.benchmark.counters import count_step, model_flops, optimizer_host_tensors, pooled_lengths, step_peak_memory
from nemo_nvembed.parallel import cpu_compat
from nemo_nvembed.paths import CONF, REPO

SMOLLM2_VOCAB = 49152


def bench_config(args) -> dict:
    """The train section (``conf/<stage>.yaml`` + the flags) and the model's recompute setting the workers use."""
    from omegaconf import OmegaConf

    from nemo_nvembed.training.config import stage_train_config

    flags = {"data.path": args.data, "data.num_negatives": args.negatives, "data.global_batch_size": args.queries,
             "data.query_max_length": args.query_max_length, "data.doc_max_length": args.doc_max_length,
             "chunking.chunk_size": args.chunk_size, "chunking.length_aware": args.length_aware,
             "chunking.chunk_cost_tokens": args.chunk_cost_tokens, "chunking.max_chunk_tokens": args.max_chunk_tokens,
             "chunking.grad_cache": args.grad_cache, "chunking.packed": args.packed,
             "chunking.pack_tokens": args.pack_tokens}
    train = stage_train_config(args.stage, [f"train.{k}={v}" for k, v in flags.items() if v is not None])
    recompute = OmegaConf.to_container(_stage_model_recompute(args.stage))
    if args.recompute is not None:
        recompute["granularity"] = None if args.recompute == "none" else args.recompute
    return {"stage": args.stage, "train": OmegaConf.to_container(train), "recompute": recompute,
            "fused_dropout": bool(getattr(args, "fused_dropout", False))}


def _stage_model_recompute(stage: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name=stage).model.recompute


def measure_peak_tflops(device: str) -> float:
    n = 4096 if device == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    bm = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(2):
        a @ bm
    reps = 50 if device == "cuda" else 6
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ bm
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


# ------------------------------------------------------------------------------------ workers

def _setup(spec):
    from omegaconf import OmegaConf

    from nemo_nvembed.parallel import distributed
    from nemo_nvembed.models.config import validate_model_config
    from nemo_nvembed.data.jsonl import load_examples
    from nemo_nvembed.data.tasks import TaskRegistry
    from nemo_nvembed.paths import model_config_path
    from nemo_nvembed.models.text import TextEncoder, load_tokenizer

    distributed.initialize(1)
    cfg = OmegaConf.load(model_config_path(spec["model"]))
    if cfg.backbone.vocab_size != SMOLLM2_VOCAB:  # e.g. mistral_7b: SmolLM2's tokenizer, ids folded (see worker)
        cfg.tokenizer = OmegaConf.load(model_config_path("smollm2_135m")).tokenizer
    cfg.tokenizer.file = spec["tokenizer"]
    if spec.get("layers"):
        cfg.backbone.num_layers = spec["layers"]
    if spec.get("recompute"):  # the stage's runtime setting (bench_config)
        cfg.recompute = spec["recompute"]
    cfg = validate_model_config(cfg)
    registry = TaskRegistry.from_yaml(CONF / "tasks.yaml")
    exs = load_examples(spec["data"], registry, spec["negatives"]).examples[: spec["queries"]]
    tok = load_tokenizer(cfg.tokenizer, spec["tokenizer"])
    text = TextEncoder(tok, cfg.query_template, cfg.tokenizer.add_bos, cfg.max_length, cfg.pool_span)
    return cfg, registry, exs, text


def fold_ids(batch, vocab_size: int):
    """Random weights: only the texts' lengths matter, so SmolLM2 token ids are folded into a smaller
    vocabulary (mistral_7b's 32,000) instead of shipping another tokenizer."""
    for b in (batch.queries, batch.docs):
        b.input_ids = b.input_ids % vocab_size
    return batch


def _timed(step, warmup: int, steps: int, device: str) -> list[float]:
    times = []
    for i in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def worker(spec: dict) -> dict:
    device = "cuda" if cpu_compat.cuda_available() else "cpu"
    cfg, registry, exs, text = _setup(spec)
    from omegaconf import OmegaConf

    from nemo_nvembed.training.config import validate_train_config
    from nemo_nvembed.training.batches import BatchStream

    tcfg = validate_train_config(OmegaConf.create(spec["train"]), source="bench config")
    batch = fold_ids(BatchStream(exs, None, registry, text, tcfg.data, True, start=lambda: 0).collate(0, exs),
                     cfg.backbone.vocab_size)
    if spec.get("dry"):  # counters on the meta device, nothing run (benchmark/dry.py)
        from nemo_nvembed.benchmark.dry import dry_worker

        return dry_worker(spec, cfg, registry, exs, text, tcfg, batch)
    amp = torch.autocast(device, dtype=torch.bfloat16, enabled=spec["precision"] == "bf16")
    k = spec["negatives"]

    if spec["system"] == "ours":
        from nemo_nvembed.models.network import NVEmbedNetwork
        from nemo_nvembed.training.objective import ContrastiveObjective

        model = NVEmbedNetwork(cfg).to(device).train()
        if spec["precision"] == "bf16":  # as a stage does under bf16-mixed (training/stage.py)
            model.cast_frozen_(torch.bfloat16)
        objective = ContrastiveObjective(tcfg, spec["queries"], seed=0)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5)

        def step():
            opt.zero_grad(set_to_none=True)
            with amp:
                loss, _ = objective.step(model, batch)
            if loss.requires_grad:
                loss.backward()
            opt.step()

        tokens = lambda: (objective.tokens["real"], objective.tokens["padded"])  # noqa: E731
        extra = {"uses_te": bool(model.backbone.uses_te)}
    else:
        from nemo_nvembed.benchmark import reference as ref

        backbone, head = ref.build_reference(cfg)
        if spec["system"] == "reference_ckpt":
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        backbone.to(device).train()
        head.to(device).train()
        params = [p for p in [*backbone.parameters(), *head.parameters()] if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5)

        def step():
            opt.zero_grad(set_to_none=True)
            with amp:
                loss = ref.step_loss(backbone, head, batch.queries, batch.docs, k, tcfg.loss.temperature)
            loss.backward()
            opt.step()

        extra = {}
        tokens = lambda: (int(batch.queries.attention_mask.sum() + batch.docs.attention_mask.sum()),  # noqa: E731
                          int(batch.queries.attention_mask.numel() + batch.docs.attention_mask.numel()))
    times = _timed(step, spec["warmup"], spec["steps"], device)
    real, padded = tokens()
    step_s = sum(times) / len(times)
    peak_mem = (torch.cuda.max_memory_allocated() / 2**30 if device == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)  # of the timed steps
    counts = count_step(step, device, optimizer_host_tensors(opt))  # one extra step under the counters
    step_peak = step_peak_memory(step, device) if spec["step_memory"] else None
    lengths = [*batch.queries.attention_mask.sum(1).tolist(), *batch.docs.attention_mask.sum(1).tolist()]
    assert sum(lengths) == real, (sum(lengths), real)
    needed = model_flops(cfg, lengths, pooled_lengths(batch))
    nonmatmul = counts.pop("nonmatmul_bytes")
    return {"system": spec["system"], "device": device, "step_s": step_s, "step_times": times,
            "tokens_real": real, "tokens_padded": padded, "tokens_per_s_real": real / step_s,
            "tokens_per_s_padded": padded / step_s, "padding_waste": (padded - real) / padded,
            "peak_memory_gib": peak_mem, "step_peak_gib": step_peak,
            "model_flops": needed, "flops_per_token": needed / real, **counts,
            "nonmatmul_bytes_per_token": nonmatmul / real,
            "sequences": len(exs) * (2 + k), **extra}


# ------------------------------------------------------------------------------------ driver

def print_config(config: dict) -> None:
    """The configuration the workers run (one line each): chunking and recompute as the stage YAML + flags give them."""
    t = config["train"]
    print(f"[bench] config: conf/{config['stage']}.yaml train + flags", flush=True)
    print("[bench]   train.chunking: " + " ".join(f"{k}={v}" for k, v in t["chunking"].items()), flush=True)
    print(f"[bench]   model.recompute.granularity: {config['recompute']['granularity']}; keyed dropout: "
          f"{'compiled kernel (NVEMBED_FUSED_DROPOUT=1)' if config.get('fused_dropout') else 'eager on CPU'}", flush=True)
    print(f"[bench]   train.data: global_batch_size={t['data']['global_batch_size']} num_negatives="
          f"{t['data']['num_negatives']} query_max_length={t['data']['query_max_length']} doc_max_length="
          f"{t['data']['doc_max_length']}; train.loss.temperature={t['loss']['temperature']}", flush=True)



_RANK_PREFIX = re.compile(r"^\[rank\d+\]:\s?")


def _error_line(stderr: str) -> str:
    """The exception line of a worker's stderr (torchrun-style ``[rankN]:`` prefixes dropped), not its
    last line: NCCL's exit warning comes after the traceback."""
    lines = [_RANK_PREFIX.sub("", x).strip() for x in stderr.strip().splitlines()]
    errors = [x for x in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", x)]
    return (errors or lines or [""])[-1]


def _tail(stderr: str, n: int = 25) -> str:
    return "\n".join("    " + x for x in stderr.strip().splitlines()[-n:])


def _tokenizer_file(tmp: Path) -> str:
    """SmolLM2's tokenizer (the only one shipped offline) for every model: the texts' real lengths."""
    path = tmp / "tokenizer.json"
    from transformers import AutoTokenizer

    from nemo_nvembed.interop.hf_import import smollm2_path

    gguf = smollm2_path()
    AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf)).backend_tokenizer.save(str(path))
    return str(path)


def _spec(args, config: dict, data, tmp: Path) -> dict:
    return {"model": args.model, "layers": args.layers, "tokenizer": args.tokenizer or _tokenizer_file(tmp),
            "data": str(data), "queries": args.queries, "negatives": config["train"]["data"]["num_negatives"],
            "train": config["train"], "recompute": config["recompute"], "fused_dropout": args.fused_dropout,
            "step_memory": not args.no_step_memory, "precision": args.precision, "warmup": args.warmup,
            "steps": args.steps, "dry": args.dry, "dry_device": args.dry_device}


def _compare_dry(args, data, tmp: Path) -> None:
    """``--dry``: our step's counters on the meta device and the MFU they bound at ``--peak-tflops``."""
    from nemo_nvembed.benchmark.dry import mfu_bounds

    config = bench_config(argparse.Namespace(**{**vars(args), "data": str(data)}))
    print_config(config)
    spec = {**_spec(args, config, data, tmp), "system": "ours"}
    print(f"[bench] ours: one step on the meta device (dry) ...", flush=True)
    out = subprocess.run([sys.executable, "-m", "nemo_nvembed.bench", "--worker", json.dumps(spec)],
                         capture_output=True, text=True, cwd=REPO)
    line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"the dry step failed (exit {out.returncode}: {_error_line(out.stderr)}):\n{_tail(out.stderr)}")
    r = json.loads(line.split(" ", 1)[1])
    peak = args.peak_tflops or 989.0  # H100 SXM dense bf16
    r.update(mfu_bounds(r, peak, args.host_us_per_call, args.hbm_tbps))
    print(f"\nmodel {args.model}{f' ({args.layers} layers)' if args.layers else ''}, dry ({r['device']}), "
          f"{args.queries} queries x (1 + {config['train']['data']['num_negatives']}) passages, {r['tokens_real']:,} real tokens")
    header = ["system", "padding", "model TFLOP", "executed / model", "aten calls", "host syncs", "non-matmul B/token",
              f"compute s at {peak:.0f} TFLOP/s", f"non-matmul s at {args.hbm_tbps:g} TB/s",
              f"launch s at {args.host_us_per_call:g} us/call", "MFU bound"]
    row = [r["system"], f"{100 * r['padding_waste']:.1f}%", f"{r['model_flops'] / 1e12:.1f}",
           f"{r['executed_flops'] / r['model_flops']:.3f}", f"{r['aten_calls']:,}", f"{r['host_syncs']:,}",
           f"{r['nonmatmul_bytes_per_token']:,.0f}", f"{r['compute_s_at_peak']:.2f}", f"{r['memory_s']:.2f}", f"{r['launch_s']:.2f}",
           f"{100 * r['mfu_bound']:.1f}%"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n| " + " | ".join(row) + " |")
    Path(args.out).write_text(json.dumps({"args": vars(args), "config": config, "dry": True, "results": [r]}, indent=2) + "\n")
    print(f"wrote {args.out}")


def compare(args) -> None:
    """``python -m nemo_nvembed.bench`` with its parsed arguments: every system in its own worker process."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data
        if data is None:
            data = REPO / "demo_out" / "data" / "stage1.jsonl"
            if not data.exists():
                subprocess.run([sys.executable, "-m", "nemo_nvembed.demo_data", "--out", str(tmp / "data")],
                               check=True, capture_output=True)
                data = tmp / "data" / "stage1.jsonl"
        device = "cuda" if cpu_compat.cuda_available() else "cpu"
        if args.dry:
            return _compare_dry(args, data, tmp)
        peak = args.peak_tflops or measure_peak_tflops(device)
        config = bench_config(argparse.Namespace(**{**vars(args), "data": str(data)}))
        print_config(config)
        spec = _spec(args, config, data, tmp)
        results, failed = [], []
        for system in args.systems.split(","):
            print(f"[bench] {system}: {args.warmup} warm-up + {args.steps} timed steps ...", flush=True)
            env = {**os.environ, "NVEMBED_FUSED_DROPOUT": "1" if args.fused_dropout else "auto"}
            out = subprocess.run([sys.executable, "-m", "nemo_nvembed.bench", "--worker", json.dumps({**spec, "system": system})],
                                 capture_output=True, text=True, cwd=REPO, env=env)
            line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
            if out.returncode != 0 or line is None:
                why = ("killed by SIGKILL: out of memory" if out.returncode == -9
                       else f"exit {out.returncode}: {_error_line(out.stderr)}")
                print(f"[bench] {system} failed ({why}); its stderr ends:\n{_tail(out.stderr)}", flush=True)
                failed.append({"system": system, "error": why})
                continue
            r = json.loads(line.split(" ", 1)[1])
            r["mfu"] = r["model_flops"] / r["step_s"] / (peak * 1e12)
            results.append(r)
    header = ["system", "step s", "tok/s real", "tok/s padded", "peak RSS GiB" if device == "cpu" else "peak alloc GiB",
              "step peak GiB", "padding", "MFU", "model GFLOP", "executed / model", "aten calls", "host syncs",
              "non-matmul B/token"]
    rows = [[r["system"], f"{r['step_s']:.2f}", f"{r['tokens_per_s_real']:.0f}", f"{r['tokens_per_s_padded']:.0f}",
             f"{r['peak_memory_gib']:.2f}", "-" if r["step_peak_gib"] is None else f"{r['step_peak_gib']:.2f}",
             f"{100 * r['padding_waste']:.1f}%", f"{100 * r['mfu']:.1f}%", f"{r['model_flops'] / 1e9:.1f}",
             f"{r['executed_flops'] / r['model_flops']:.2f}", f"{r['aten_calls']:,}", f"{r['host_syncs']:,}",
             f"{r['nonmatmul_bytes_per_token']:,.0f}"] for r in results]
    print(f"\nmodel {args.model}{f' ({args.layers} layers)' if args.layers else ''}, {device}, {args.precision}, "
          f"{args.queries} queries x (1 + {config['train']['data']['num_negatives']}) passages, peak {peak:.2f} TFLOP/s"
          f"{' (measured)' if not args.peak_tflops else ''}")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    for f in failed:
        print(f"| {f['system']} | failed: {f['error']} |")
    summary = {"args": vars(args), "config": config, "peak_tflops": peak, "results": results, "failed": failed}
    by = {r["system"]: r for r in results}
    for name in ("reference", "reference_ckpt"):
        if "ours" not in by or name not in by:
            continue
        ours, ref = by["ours"], by[name]
        ratio = ours["tokens_per_s_real"] / ref["tokens_per_s_real"]
        summary["ratio_tokens_per_s_real" + name[len("reference"):]] = ratio
        print(f"\nours / {name}: {ratio:.2f}x real tokens/s, {ref['step_s'] / ours['step_s']:.2f}x faster steps, "
              f"{ours['peak_memory_gib'] / ref['peak_memory_gib']:.2f}x peak memory")
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")
    if device == "cuda" and args.gpu_mistral_layers and args.model != "mistral_7b":
        # The same comparison at Mistral-7B width (reduced depth): the paper's layer shapes, with
        # transformer-engine layers where ours can use them (backbone.uses_te).
        print(f"\n[bench] Mistral-7B width, {args.gpu_mistral_layers} layers", flush=True)
        compare(argparse.Namespace(**{**vars(args), "model": "mistral_7b", "layers": args.gpu_mistral_layers,
                                      "gpu_mistral_layers": 0,
                                      "out": str(Path(args.out).with_suffix("")) + ".mistral_7b.json"}))
