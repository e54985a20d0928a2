"""``make demo`` (``python -m nemo_nvembed.demo``): NV-Embed's two-stage recipe end to end on the embedded default, on a CPU.

1. real training and held-out data from the Python standard library's documentation
   (:mod:`nemo_nvembed.recipes.demo_corpus`; offline, deterministic, no shared text between splits);
2. SmolLM2-135M-Instruct imported from the packaged GGUF twice: with mean pooling (the
   baseline) and with a fresh latent-attention head + LoRA (the model to train);
3. stage 1 and stage 2 with ``torchrun`` on 2 gloo processes (data-parallel), using the stage
   configs with the overrides in ``conf/demo.yaml``;
4. held-out nDCG@10 for BM25 (the keyword baseline), the base model (mean pooling) and, every
   ``train.validation.every_n_steps`` steps, the model in training: a table and a learning-curve
   PNG under ``out``.

The terminal shows the steps, one progress line per stage and the results; the commands and all
they print (NeMo's configuration dumps, library warnings) go to ``<out>/demo.log``.

Every step is skipped when its output exists, so an interrupted demo resumes where it stopped. Each
step's arguments are recorded beside its output (``<output>.args.json``) when it starts; an output made
by other arguments (a changed ``conf/demo.yaml``) is refused, naming what changed, never reused.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from nemo_nvembed.data.tasks import TaskRegistry
from nemo_nvembed.eval.bm25_baseline import score_bm25
from nemo_nvembed.eval.learning_curve import plot, read_validation
from nemo_nvembed.eval.st_baseline import score_sentence_transformer
from nemo_nvembed.paths import CONF, REPO, minilm_path
from nemo_nvembed.recipes.console import Console, DemoFailed
from nemo_nvembed.training import host_allocator


def evaluate(con: Console, nemo: Path, beir: Path, instruction: str, precision: str) -> dict:
    cache = nemo.with_suffix(f".{beir.name}.json")
    stamp = f"{nemo.stat().st_size}-{nemo.stat().st_mtime_ns}"
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("stamp") == stamp:
            con.note(f"(cached) {cache}")
            return cached
    out = con.run([sys.executable, "-m", "nemo_nvembed.evaluate", "--model", str(nemo), "--beir", str(beir),
                   "--instruction", instruction, "--precision", precision, "--batch-size", "32"], REPO)
    result = json.loads(out.strip().splitlines()[-1])
    result["stamp"] = stamp
    cache.write_text(json.dumps(result))
    return result


def stamp(path: Path) -> str:
    """An input file's identity in a step's record: remade upstream, it changes, so the step is not reused."""
    st = path.stat()
    return f"input {path} {st.st_size}-{st.st_mtime_ns}"


def reuse(con: Console, output: Path, args: list[str], done: Path | None = None) -> bool:
    """Whether the step making `output` from `args` is done (True: skip it). Its arguments are recorded
    in ``<output>.args.json`` when it starts (False); an output or record from other arguments is
    refused (:class:`DemoFailed` naming what changed), so a changed configuration never reuses a stale
    result. An output made before arguments were recorded is reused, as before. ``done``: the file whose
    existence says the step finished (default: `output` itself). `args` include :func:`stamp` of the
    step's input files, so a step whose inputs were made again is refused too."""
    record = output.parent / f"{output.name}.args.json"
    if record.exists():
        before = json.loads(record.read_text())["args"]
        if before != args:
            gone, new = [a for a in before if a not in args], [a for a in args if a not in before]
            raise DemoFailed(f"{output} was {'made' if (done or output).exists() else 'started'} with other arguments "
                             f"({record}): now without {gone or '-'}, now with {new or '-'}"
                             f"{' (same arguments, another order)' if not gone and not new else ''}; "
                             f"remove {output} and {record} to make it again with these")
    if (done or output).exists():
        con.note(f"(exists) {output}")
        return True
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"args": args}, indent=1) + "\n")
    return False


def run_demo(config: str, overrides: list[str]) -> int:
    """``python -m nemo_nvembed.demo``: every step of the demo described by `config` (conf/demo.yaml); exit code."""
    dcfg = OmegaConf.load(config)
    out = Path(dcfg.out)
    out.mkdir(parents=True, exist_ok=True)
    con = Console(out / "demo.log")
    con.say(f"config {config}; commands and their full output go to {con.log_path}")
    try:
        run_pipeline(con, dcfg, out, overrides)
    except DemoFailed as e:
        print(f"\ndemo failed: {e}", file=sys.stderr)
        return 1
    return 0


def run_pipeline(con: Console, dcfg, out: Path, overrides: list[str]) -> None:
    fmt = lambda items: [str(x).format(out=out) for x in items]  # noqa: E731
    registry = TaskRegistry.from_yaml(CONF / "tasks.yaml")
    instruction = registry[dcfg.eval_task].eval_instruction
    data = out / "data"

    con.say(f"1/6 data: {dcfg.data_description} -> contrastive tasks + held-out BEIR split")
    data_cmd = [sys.executable, "-m", "nemo_nvembed.demo_data", "--out", str(data), *fmt(dcfg.data_args)]
    if not reuse(con, data, data_cmd[3:], done=data / "manifest.json"):
        con.run(data_cmd, REPO)
    counts = json.loads((data / "manifest.json").read_text())["counts"]
    con.note(f"stage 1: {counts['stage1']}; stage 2: {counts['stage2']}; held-out: {counts['heldout']}")

    base_mean = dcfg.get("base_mean_baseline", True)  # the untrained model's row: one more conversion and evaluation
    con.say(f"2/6 base model: {dcfg.base_source} ({'mean-pooling baseline and ' if base_mean else ''}the model to train)")
    for name, extra in ((("base_mean", ["model.pooling.type=mean"]),) if base_mean else ()) + (("base", []),):
        nemo = out / f"{name}.nemo"
        convert = [dcfg.base_source, "--out", str(nemo), "--model-config", dcfg.base_model_config,
                   *fmt(dcfg.base_overrides), *extra]
        if not reuse(con, nemo, convert):
            con.run([sys.executable, "-m", "nemo_nvembed.convert", "from-hf", *convert], REPO)

    second = data / dcfg.heldout2.folder if dcfg.get("heldout2") else None
    if second and not second.exists():  # data built with --manpages-queries 0
        con.note(f"no {second}: the second held-out split is left out of the table")
        second = None
    instruction2 = registry[dcfg.heldout2.task].eval_instruction if second else None
    con.say("3/6 held-out baselines: BM25, all-MiniLM-L6-v2" + (" and the base model with mean pooling" if base_mean else ""))
    results, results2 = {"BM25 (bm25s, no training)": score_bm25(data / "heldout")}, {}
    if second:
        results2["BM25 (bm25s, no training)"] = score_bm25(second)
    minilm = minilm_path() if dcfg.get("minilm_baseline", False) else None
    if minilm is not None:  # the offline package (make install puts it in); a reference row, not a teacher here
        name = "all-MiniLM-L6-v2 (22M, trained on 1B pairs)"
        results[name] = score_sentence_transformer(data / "heldout", minilm)
        if second:
            results2[name] = score_sentence_transformer(second, minilm)
    if base_mean:
        results["base model, mean pooling"] = evaluate(con, out / "base_mean.nemo", data / "heldout", instruction,
                                                       dcfg.eval_precision)
    for name, r in results.items():
        con.note(f"{name}: nDCG@10 {r['ndcg@10']:.4f}" + (f"; {second.name} {results2[name]['ndcg@10']:.4f}"
                                                          if name in results2 else ""))

    # The workers' host allocator (training/host_allocator.py): jemalloc when installed, unless the config says glibc.
    try:
        os.environ[host_allocator.ENV] = host_allocator.check_choice(dcfg.get("host_allocator", "jemalloc"),
                                                                     "the demo config's host_allocator")
    except host_allocator.AllocatorChoiceError as e:
        raise DemoFailed(str(e)) from None
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(dcfg.processes),
                "-m", "nemo_nvembed.train"]
    curves = []
    for i, stage in enumerate(("stage1", "stage2")):
        # base_overrides shaped the converted model, so the stage's model section says the same
        stage_args = [*fmt(dcfg.common), *fmt(dcfg.base_overrides), *fmt(dcfg[stage]), *overrides]
        max_steps = int(OmegaConf.from_dotlist([a for a in stage_args if a.startswith("trainer.max_steps=")])
                        .trainer.max_steps)
        con.say(f"{4 + i}/6 {stage}: {max_steps} steps on {dcfg.processes} gloo processes (data-parallel)")
        nemo = out / "runs" / stage / f"{stage}.nemo"
        inputs = [data / "manifest.json", out / "base.nemo" if stage == "stage1" else out / "runs" / "stage1" / "stage1.nemo"]
        if not reuse(con, out / "runs" / stage, [*stage_args, *map(stamp, inputs)], done=nemo):  # record beside the run folder
            con.run_stage([*torchrun, "--config-name", stage, *stage_args], REPO, stage, max_steps)
        points = read_validation(out / "runs" / stage)
        if not points or points[-1][0] != max_steps:
            raise DemoFailed(f"{stage}: no held-out validation at step {max_steps} in {out / 'runs' / stage}")
        curves.append((f"after {stage}", points))
        step, ndcg, recall = points[-1]
        results[f"after {stage}"] = {"ndcg@10": ndcg, "recall@100": recall, "steps": step}
        if second and stage == "stage2":  # the final model only (an evaluation costs ~1 min on 2 cores)
            results2[f"after {stage}"] = {**evaluate(con, nemo, second, instruction2, dcfg.eval_precision), "steps": step}

    con.say("held-out results")
    rows = ["| model | training steps | nDCG@10 | Recall@100 |" + (f" {second.name} nDCG@10 | Recall@100 |" if second else ""),
            "|---|---|---|---|" + ("---|---|" if second else "")]
    two = lambda k: (f" {results2[k]['ndcg@10']:.4f} | {results2[k]['recall@100']:.4f} |" if k in results2  # noqa: E731
                     else " - | - |") if second else ""
    rows += [f"| {k} | {v.get('steps', 0)} | {v['ndcg@10']:.4f} | {v['recall@100']:.4f} |{two(k)}" for k, v in results.items()]
    table = "\n".join(rows)
    bm25 = results["BM25 (bm25s, no training)"]
    print(f"held-out: {bm25['queries']} queries, {bm25['corpus']} documents (modules unseen in training)")
    if second:
        b2 = results2["BM25 (bm25s, no training)"]
        print(f"{second.name}: {b2['queries']} queries, {b2['corpus']} documents ({dcfg.heldout2.description})")
    print()
    print(table, flush=True)
    con.log.write(table + "\n")
    png = plot([(name.replace("after ", ""), pts) for name, pts in curves],
               ("base model, mean pooling", results["base model, mean pooling"]["ndcg@10"]) if base_mean else None,
               {k.split(" (")[0]: v["ndcg@10"] for k, v in results.items() if k.startswith(("BM25", "all-MiniLM"))},
               out / "learning_curve.png",
               f"held-out nDCG@10 ({bm25['queries']} queries, {bm25['corpus']} documents)")
    (out / "results.md").write_text(table + "\n")
    both = {"results": results, **({f"results_{second.name}": results2} if second else {}), "curves": dict(curves)}
    (out / "results.json").write_text(json.dumps(both, indent=2) + "\n")
    con.say(f"done in {time.time() - con.t0:.0f}s: .nemo files under {out}/runs, table {out}/results.md, "
            f"learning curve {png}, log {con.log_path}")
