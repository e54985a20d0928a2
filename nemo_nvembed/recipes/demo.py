"""``make demo`` (``python -m nemo_nvembed.demo``): NV-Embed's two-stage recipe end to end on the embedded default, on a CPU.

1. real training and held-out data from the Python standard library's documentation
   (:mod:`nemo_nvembed.demo_data`; offline, deterministic, no shared text between splits);
2. SmolLM2-135M-Instruct imported from the packaged GGUF twice: with mean pooling (the
   baseline) and with a fresh latent-attention head + LoRA (the model to train);
3. stage 1 and stage 2 with ``torchrun`` on 2 gloo processes (data-parallel), using the stage
   configs with the overrides in ``conf/demo.yaml``;
4. held-out nDCG@10 for the base model (mean pooling), after stage 1 and after stage 2.

Every step is skipped when its output exists, so an interrupted demo resumes where it stopped.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from nemo_nvembed.paths import CONF, REPO

T0 = time.time()


def say(msg: str) -> None:
    print(f"\n[demo {time.time() - T0:6.0f}s] {msg}", flush=True)


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def evaluate(nemo: Path, beir: Path, instruction: str, precision: str) -> dict:
    cache = nemo.with_suffix(".heldout.json")
    stamp = f"{nemo.stat().st_size}-{nemo.stat().st_mtime_ns}"
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("stamp") == stamp:
            print(f"(cached) {cache}")
            return cached
    out = subprocess.run([sys.executable, "-m", "nemo_nvembed.evaluate", "--model", str(nemo), "--beir", str(beir),
                          "--instruction", instruction, "--precision", precision, "--batch-size", "32"],
                         check=True, cwd=REPO, stdout=subprocess.PIPE, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["stamp"] = stamp
    cache.write_text(json.dumps(result))
    return result


def run_demo(config: str, overrides: list[str]) -> None:
    """``python -m nemo_nvembed.demo``: every step of the demo described by `config` (conf/demo.yaml)."""
    dcfg = OmegaConf.load(config)
    out = Path(dcfg.out)
    out.mkdir(parents=True, exist_ok=True)
    fmt = lambda items: [str(x).format(out=out) for x in items]  # noqa: E731

    from nemo_nvembed.data.tasks import TaskRegistry

    registry = TaskRegistry.from_yaml(CONF / "tasks.yaml")
    instruction = registry[dcfg.eval_task].eval_instruction
    data = out / "data"

    say("1/6 data: Python standard-library documentation -> contrastive tasks + held-out BEIR split")
    if (data / "manifest.json").exists():
        print(f"(exists) {data}")
    else:
        run([sys.executable, "-m", "nemo_nvembed.demo_data", "--out", str(data)])

    say(f"2/6 base model: {dcfg.base_source} (mean-pooling baseline and the model to train)")
    for name, extra in (("base_mean", ["model.pooling.type=mean"]), ("base", [])):
        nemo = out / f"{name}.nemo"
        if nemo.exists():
            print(f"(exists) {nemo}")
        else:
            run([sys.executable, "-m", "nemo_nvembed.convert", "from-hf", dcfg.base_source, "--out", str(nemo),
                 "--model-config", dcfg.base_model_config, *extra])

    say("3/6 held-out evaluation of the base model with mean pooling")
    results = {"base model, mean pooling": evaluate(out / "base_mean.nemo", data / "heldout", instruction, dcfg.eval_precision)}

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(dcfg.processes),
                "-m", "nemo_nvembed.train"]
    for i, stage in enumerate(("stage1", "stage2")):
        say(f"{4 + i}/6 {stage}: {dcfg.processes} gloo processes, data-parallel")
        run([*torchrun, "--config-name", stage, *fmt(dcfg.common), *fmt(dcfg[stage]), *overrides])
        nemo = out / "runs" / stage / f"{stage}.nemo"
        results[f"after {stage}"] = evaluate(nemo, data / "heldout", instruction, dcfg.eval_precision)

    say("held-out results")
    rows = ["| model | nDCG@10 | Recall@100 |", "|---|---|---|"]
    rows += [f"| {k} | {v['ndcg@10']:.4f} | {v['recall@100']:.4f} |" for k, v in results.items()]
    table = "\n".join(rows)
    held = next(iter(results.values()))
    print(f"held-out: {held['queries']} queries, {held['corpus']} documents (modules unseen in training)\n")
    print(table)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    say(f"done: .nemo files under {out}/runs, results in {out}/results.md")
