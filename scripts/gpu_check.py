"""The GPU path in one call: install the bundle offline, then test, train and benchmark on the GPU.

    scripts/gpu_check.sh [OUTDIR] [--bundle gpu_bundle] [--budget-s 450] [--cpu-smoke] [--only STEP,...]

Runs with the ``python3`` on PATH (on the device machine: the image's, which holds CUDA PyTorch) and
uses only the standard library itself, so it starts before anything is installed. Steps, each timed,
bounded by its own limit and by what is left of ``--budget-s``, each recorded whatever happens
(a failing step is written down and the next one runs):

  environment  python, torch, CUDA device, pip versions of the packages the project uses
  install      pip install --no-index --no-deps <bundle>/*.whl over the image (torch untouched); pip check
  imports      every nemo_nvembed module (mteb_encoder, eval.mteb only if mteb is installed: it is not carried)
  nccl         torchrun, world size 1: our process-group setup (NCCL with CUDA) and one all-reduce
  pytest_gpu   pytest tests/test_gpu.py
  data         the demo's training data (python -m nemo_nvembed.demo_data), offline, seconds
  stage1       a tiny random base model, then a short stage-1 run through torchrun (world size 1, bf16-mixed)
  bench        python -m nemo_nvembed.bench: SmolLM2-135M shapes, then Mistral-7B width at 4 layers, ours vs reference

Without CUDA the GPU-only steps are skipped, unless ``--cpu-smoke`` runs every step at toy sizes on
CPU (gloo): what the rehearsal in tests/test_gpu_bundle.py does. OUTDIR (default: $OUT, the device
tool's folder) receives at most 8 files, as the device tool brings back: summary.json (every step:
status, seconds, command, log tail, parsed results), check.log (all output), bench.json,
bench.mistral_7b.json, pytest_gpu.xml. Scratch work goes to a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOKENIZER = "smollm2_tokenizer.json"  # written by scripts/gpu_bundle.py
NOT_CARRIED = {"nemo_nvembed.mteb_encoder": "mteb", "nemo_nvembed.eval.mteb": "mteb"}  # module -> the package the bundle leaves out

# Per-step sizes. GPU: the real shapes, a few steps each. CPU smoke: the same code paths, toy sizes.
STAGE1 = {
    "gpu": ["train.data.global_batch_size=32", "train.data.num_negatives=7", "train.data.query_max_length=128",
            "train.data.doc_max_length=128", "trainer.max_steps=20"],
    "cpu": ["train.data.global_batch_size=4", "train.data.num_negatives=1", "train.data.query_max_length=32",
            "train.data.doc_max_length=32", "trainer.max_steps=2"],
}
BENCH = {
    "gpu": ["--model", "smollm2_135m", "--queries", "16", "--negatives", "7", "--warmup", "2", "--steps", "5",
            "--gpu-mistral-layers", "4", "--packed"],  # packed chunks (varlen flash attention): never run on a GPU yet
    "cpu": ["--model", "tiny", "--queries", "2", "--negatives", "1", "--query-max-length", "32",
            "--doc-max-length", "32", "--warmup", "0", "--steps", "1", "--no-step-memory", "--peak-tflops", "1",
            "--no-fused-dropout"],  # the CPU smoke checks the plumbing; compiling the dropout kernel on CPU costs ~30 s
}
# Upper bounds in seconds (the whole run is also held to --budget-s).
LIMITS = {"environment": 60, "install": 150, "imports": 120, "nccl": 90, "pytest_gpu": 150, "data": 90,
          "stage1": 180, "bench": 300}

ENV_PROBE = r"""
import json, platform, sys
from importlib import metadata
out = {"python": sys.version.split()[0], "executable": sys.executable, "machine": platform.machine()}
try:
    import torch
    out.update(torch=torch.__version__, cuda_available=torch.cuda.is_available(), torch_cuda=torch.version.cuda)
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update(device=p.name, memory_gib=round(p.total_memory / 2**30, 1), sm=f"{p.major}.{p.minor}",
                   nccl=".".join(map(str, torch.cuda.nccl.version())), bf16=torch.cuda.is_bf16_supported())
except Exception as e:
    out["torch_error"] = repr(e)
pk = {}
for n in ("torch", "megatron-core", "nemo_toolkit", "lightning", "pytorch-lightning", "transformers", "tokenizers",
          "huggingface-hub", "peft", "numpy", "pyarrow", "hydra-core", "omegaconf", "transformer-engine", "packaging"):
    try:
        pk[n] = metadata.version(n)
    except metadata.PackageNotFoundError:
        pk[n] = None
out["packages"] = pk
print("RESULT " + json.dumps(out))
"""

IMPORTS = r"""
import importlib, importlib.util, json, pkgutil, sys, traceback
import nemo_nvembed
not_carried = json.loads(sys.argv[1])
ok, failed, skipped = [], {}, {}
for m in sorted(x.name for x in pkgutil.walk_packages(nemo_nvembed.__path__, "nemo_nvembed.")):
    need = not_carried.get(m)
    if need and importlib.util.find_spec(need) is None:
        skipped[m] = f"needs {need}, not carried"
        continue
    try:
        importlib.import_module(m)
        ok.append(m)
    except BaseException as e:
        failed[m] = "".join(traceback.format_exception_only(type(e), e)).strip()
print("RESULT " + json.dumps({"ok": len(ok), "failed": failed, "skipped": skipped}))
sys.exit(1 if failed else 0)
"""

NCCL_PROBE = r"""
import json, torch, torch.distributed as dist
from nemo_nvembed.parallel import distributed
distributed.initialize(1)
dev = "cuda" if torch.cuda.is_available() else "cpu"
x = torch.ones(4, device=dev)
dist.all_reduce(x)
print("RESULT " + json.dumps({"backend": dist.get_backend(), "world_size": dist.get_world_size(), "device": dev,
                              "all_reduce_ok": bool((x == 1).all())}))
dist.destroy_process_group()
"""

TINY_BASE = r"""
import sys
from omegaconf import OmegaConf
from nemo_nvembed.models.network import NVEmbedNetwork
cfg = OmegaConf.load("conf/model/tiny.yaml")
cfg.tokenizer.file = sys.argv[1]
NVEmbedNetwork.from_config(cfg).save_to(sys.argv[2])
"""


class Check:
    def __init__(self, out: Path, budget_s: float, only: set[str] | None):
        self.out, self.deadline, self.t0, self.only = out, time.monotonic() + budget_s, time.monotonic(), only
        unknown = (only or set()) - set(LIMITS)
        if unknown:
            raise SystemExit(f"--only: unknown steps {sorted(unknown)}; steps: {', '.join(LIMITS)}")
        self.log = open(out / "check.log", "a", buffering=1)
        self.summary = {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "budget_s": budget_s,
                        "host": platform.node(), "steps": {}}

    def write(self):
        self.summary["total_s"] = round(time.monotonic() - self.t0, 1)
        self.summary["failed"] = [k for k, v in self.summary["steps"].items() if v["status"] == "failed"]
        tmp = self.out / "summary.json.tmp"
        tmp.write_text(json.dumps(self.summary, indent=2) + "\n")
        os.replace(tmp, self.out / "summary.json")

    def skip(self, name: str, why: str):
        self.summary["steps"][name] = {"status": "skipped", "reason": why}
        self.log.write(f"\n=== {name}: skipped ({why})\n")
        print(f"[gpu-check] {name}: skipped ({why})", flush=True)
        self.write()

    def run(self, name: str, cmds: list[list[str]], env: dict | None = None) -> dict:
        """Run ``cmds`` in order (stop at the first failure) within the step's limit; record everything."""
        if self.only is not None and name not in self.only and name not in ("environment", "install"):
            return self.skip(name, "not in --only") or {}
        limit = min(LIMITS[name], self.deadline - time.monotonic())
        rec = {"status": "ok", "limit_s": round(limit, 1), "commands": [shlex.join(c) for c in cmds]}
        if limit < 5:
            return self.skip(name, "no time left in --budget-s") or {}
        print(f"[gpu-check] {name} (at most {limit:.0f} s) ...", flush=True)
        self.log.write(f"\n=== {name}\n")
        t, text = time.monotonic(), ""
        for cmd in cmds:
            self.log.write(f"$ {shlex.join(cmd)}\n")
            left = limit - (time.monotonic() - t)
            try:
                p = subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, timeout=max(left, 1), start_new_session=True)
                text += p.stdout
                self.log.write(p.stdout)
                if p.returncode != 0:
                    rec.update(status="failed", returncode=p.returncode)
                    break
            except subprocess.TimeoutExpired as e:
                out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
                text += out
                self.log.write(out + f"\n[gpu-check] {name}: timed out after {limit:.0f} s\n")
                rec.update(status="failed", returncode="timeout")
                break
        rec["seconds"] = round(time.monotonic() - t, 1)
        rec["log_tail"] = text[-3000:]
        results = [json.loads(x[len("RESULT "):]) for x in text.splitlines() if x.startswith("RESULT ")]
        if results:
            rec["result"] = results[-1]
        self.summary["steps"][name] = rec
        print(f"[gpu-check] {name}: {rec['status']} in {rec['seconds']} s", flush=True)
        self.write()
        return rec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outdir", nargs="?", default=os.environ.get("OUT"), help="results folder (default: $OUT)")
    p.add_argument("--bundle", default=str(REPO / "gpu_bundle"), help="folder of wheels from `make gpu-bundle`")
    p.add_argument("--budget-s", type=float, default=450.0, help="the whole check's time limit (8 min lease slot)")
    p.add_argument("--cpu-smoke", action="store_true", help="no CUDA: run every step at toy sizes on CPU")
    p.add_argument("--only", default=None,
                   help="comma-separated steps to run after environment + install (a rerun), e.g. stage1,bench")
    args = p.parse_args(argv)
    if not args.outdir:
        p.error("give OUTDIR or set OUT")
    out, bundle = Path(args.outdir).resolve(), Path(args.bundle).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    py = sys.executable
    chk = Check(out, args.budget_s, set(args.only.split(",")) if args.only else None)
    chk.summary.update(bundle=str(bundle), work=str(work), cpu_smoke=args.cpu_smoke)
    env = {"PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "PYTHONUNBUFFERED": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    tok = bundle / TOKENIZER

    e = chk.run("environment", [[py, "-c", ENV_PROBE]], env)
    wheels = sorted(str(w) for w in bundle.glob("*.whl"))
    if not wheels or not tok.is_file():
        chk.skip("install", f"{bundle} has no wheels or no {TOKENIZER}: run `make gpu-bundle` and carry gpu_bundle")
    else:
        rec = chk.run("install", [[py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                                   "--no-cache-dir", "--disable-pip-version-check", *wheels]], env)
        if rec:  # pip check: recorded, not fatal (the image has inconsistencies of its own)
            pc = subprocess.run([py, "-m", "pip", "check"], capture_output=True, text=True)
            rec["pip_check"] = pc.stdout.strip().splitlines()
            chk.log.write("$ pip check\n" + pc.stdout)
            chk.write()
    chk.run("imports", [[py, "-c", IMPORTS, json.dumps(NOT_CARRIED)]], env)

    cuda = bool(e.get("result", {}).get("cuda_available"))
    mode = "gpu" if cuda else "cpu"
    chk.summary["mode"] = mode
    if not cuda and not args.cpu_smoke:
        for name in ("nccl", "pytest_gpu", "data", "stage1", "bench"):
            chk.skip(name, "no CUDA device (use --cpu-smoke to run the steps at toy sizes on CPU)")
        return finish(chk)

    torchrun = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    chk.run("nccl", [torchrun + ["--no-python", py, "-c", NCCL_PROBE]], env)
    if chk.summary["steps"].get("nccl"):  # one lent GPU: world size 1 proves the set-up, not NCCL across GPUs
        chk.summary["steps"]["nccl"]["note"] = "world size 1: process-group set-up only, no collective across GPUs"
    chk.run("pytest_gpu", [[py, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider", "tests/test_gpu.py",
                            f"--junitxml={out / 'pytest_gpu.xml'}"]],
            {**env, "NVEMBED_TEST_TOKENIZER": str(tok)} if tok.is_file() else env)
    pg = chk.summary["steps"].get("pytest_gpu")
    if pg and cuda and (out / "pytest_gpu.xml").is_file():
        # A GPU machine where every GPU test skipped proved nothing: that is a failure, not a pass.
        import xml.etree.ElementTree as ET

        suite = ET.parse(out / "pytest_gpu.xml").getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        tests, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
        pg["tests"], pg["skipped_tests"] = tests, skipped
        if tests == 0 or skipped == tests:
            pg["status"] = "failed"
            pg["reason"] = f"{skipped} of {tests} GPU tests skipped on a CUDA machine"
        chk.write()
    if not tok.is_file():
        for name in ("data", "stage1", "bench"):
            chk.skip(name, f"no {tok}: run `make gpu-bundle` and carry gpu_bundle")
        return finish(chk)
    data = work / "data"
    chk.run("data", [[py, "-m", "nemo_nvembed.demo_data", "--out", str(data)]], env)
    base = work / "tiny_base.nemo"
    s1 = chk.run("stage1", [
        [py, "-c", TINY_BASE, str(tok), str(base)],
        torchrun + ["-m", "nemo_nvembed.train", "--config-name", "stage1", "model=tiny", f"run_root={work / 'runs'}",
                    f"init_from={base}", f"train.data.path={data / 'stage1.jsonl'}", "train.optim.warmup_steps=2",
                    "trainer.precision=bf16-mixed", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
                    "exp_manager.checkpoint_callback_params.every_n_train_steps=1000", *STAGE1[mode]],
    ], env)
    if s1:
        nemo = work / "runs" / "stage1" / "stage1.nemo"
        s1["stage1_nemo_written"] = nemo.is_file()
        if s1["status"] == "ok" and not nemo.is_file():
            s1["status"] = "failed"
        chk.write()
    chk.run("bench", [[py, "-m", "nemo_nvembed.bench", *BENCH[mode], "--data", str(data / "stage1.jsonl"),
                       "--tokenizer", str(tok), "--out", str(out / "bench.json")]], env)
    b = chk.summary["steps"].get("bench")
    if b and b["status"] != "skipped":
        b["result"] = {}
        for f in sorted(out.glob("bench*.json")):
            r = json.loads(f.read_text())
            b["result"][f.name] = {"peak_tflops": r.get("peak_tflops"), "failed": r.get("failed"),
                                   "ratio_tokens_per_s_real": r.get("ratio_tokens_per_s_real"),
                                   "systems": {x["system"]: {k: x.get(k) for k in ("step_s", "tokens_per_s_real", "mfu",
                                                                                    "peak_memory_gib", "uses_te")}
                                               for x in r.get("results", [])}}
            if r.get("failed") or not r.get("results"):  # bench.py exits 0 when a system fails: count it here
                b["status"] = "failed"
        if not b["result"] and b["status"] == "ok":
            b["status"] = "failed"
        chk.write()
    return finish(chk)


def finish(chk: Check) -> int:
    chk.write()
    chk.log.close()
    failed = chk.summary["failed"]
    print(f"[gpu-check] done in {chk.summary['total_s']} s; failed: {', '.join(failed) or 'none'}; "
          f"results in {chk.out}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
