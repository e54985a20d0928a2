"""Rehearsal of the GPU check on this CPU machine, so a missing wheel or a version clash shows here,
not during a 15-minute GPU lease (scripts/gpu_check.sh, README "Check a GPU").

No CPU build of PyTorch exists here for Python 3.12 (the only local one is torch 2.13.0+cpu for 3.11;
PyPI's Linux torch for 3.12 is the multi-GB CUDA build), so the rehearsal is split in two:

1. Python 3.12 (the image's): a fresh venv gets gpu_bundle/ exactly as the GPU machine does
   (``pip install --no-index --no-deps``): every wheel installs, the compiled ones load; and the
   requirements' closure (pyproject.toml -> bundle wheels' METADATA -> the image's package list,
   scripts/gpu_image.txt) has nothing missing and no version clash.
2. Python 3.11 + CPU torch: a fresh venv holding only stand-ins for the image (the image packages the
   closure reaches, at the image's versions where known) gets the same pins as cp311 wheels from the
   check script's own install step, then scripts/gpu_check.sh --cpu-smoke runs every step at toy
   sizes: imports of every module, our process-group setup, tests/test_gpu.py (skips), demo data, a
   stage-1 run through torchrun with bf16-mixed, the benchmark (ours and the reference).

Not proven here: anything CUDA (NCCL, TE, bf16 kernels, memory, speed), torch 2.11 (the image's) in
place of 2.13, and image packages whose versions gpu_image.txt does not know.
The venvs are cached under .gpu_rehearsal/ keyed to the lists, so a second run skips their set-up.
Heavy by design (one module, bounded): first run downloads ~40 MB of bundle wheels per Python and the
stand-ins; every subprocess has a time limit.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REHEARSAL = REPO / ".gpu_rehearsal"
sys.path.insert(0, str(REPO / "scripts"))
import gpu_bundle  # noqa: E402

KEY = hashlib.md5(b"".join((REPO / f).read_bytes() for f in
                           ("scripts/gpu_bundle.txt", "scripts/gpu_image.txt", "pyproject.toml"))).hexdigest()[:12]


def python312() -> str | None:
    """GPU_REHEARSAL_PY312, else pyenv's 3.12, else python3.12 on PATH: the first that really runs 3.12."""
    for c in [os.environ.get("GPU_REHEARSAL_PY312"), *sorted(glob.glob(os.path.expanduser(
            "~/.pyenv/versions/3.12*/bin/python3.12"))), shutil.which("python3.12")]:
        if c and subprocess.run([c, "-c", "import sys; assert sys.version_info[:2] == (3, 12)"],
                                capture_output=True).returncode == 0:
            return c
    return None


def venv(python: str, name: str) -> tuple[Path, bool]:
    """.gpu_rehearsal/<name>-<KEY>: (path, ready). A venv of another key is removed; a half-made one is redone."""
    path = REHEARSAL / f"{name}-{KEY}"
    for old in REHEARSAL.glob(f"{name}-*"):
        if old != path:
            shutil.rmtree(old)
    if (path / ".ready").exists():
        return path, True
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(path)], check=True)
    return path, False


def pip(v: Path, *args: str) -> None:
    p = subprocess.run([str(v / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", *args],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"pip {' '.join(args[:6])} ...:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"


@pytest.fixture(scope="module")
def bundle() -> Path:
    """`make gpu-bundle` (downloads only what is missing; checks size and closure)."""
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_bundle.py"), "build"], capture_output=True,
                       text=True, cwd=REPO)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return REPO / "gpu_bundle"


def test_bundle_closure_has_nothing_missing_and_catches_a_gap(bundle, tmp_path):
    r = gpu_bundle.closure(bundle, "3.12.3")
    assert r["missing"] == [] and r["clashes"] == []
    assert "transformers" in r["image_used"] and "torch" not in r["image_used"]
    # The check really looks: without pydantic's wheel, wandb / nv-one-logger / aistore miss it.
    for f in bundle.glob("*.whl"):
        if not f.name.startswith("pydantic-"):
            os.symlink(f, tmp_path / f.name)
    gap = gpu_bundle.closure(tmp_path, "3.12.3")
    assert any(m.startswith("pydantic") for m in gap["missing"]), gap


def test_bundle_installs_offline_on_python312(bundle):
    py = python312()
    if py is None:
        pytest.skip("no Python 3.12 interpreter (set GPU_REHEARSAL_PY312)")
    v, ready = venv(py, "py312")
    if not ready:
        # The two image packages the bundle's compiled modules import (at the image's versions), then the
        # GPU machine's own install command on the image's Python minor version.
        image = gpu_bundle.read_image()
        pip(v, "install", "-q", f"numpy=={image['numpy']}", "typing-extensions")
        pip(v, "install", "-q", "--no-index", "--no-deps", "--no-compile", *map(str, sorted(bundle.glob("*.whl"))))
        (v / ".ready").touch()
    listed = subprocess.run([str(v / "bin" / "python"), "-m", "pip", "list", "--format=json"], capture_output=True,
                            text=True, check=True).stdout
    installed = {gpu_bundle.canonicalize_name(d["name"]): d["version"] for d in json.loads(listed)}
    pins, _ = gpu_bundle.read_list()
    assert {n: installed.get(n) for n in pins} == pins
    # Every cp312 extension module of the bundle loads (megatron's directly: its package imports torch).
    load = ("import glob, importlib.machinery as m, importlib.util as u, sysconfig\n"
            "import msgspec, multiprocess, pydantic_core._pydantic_core, pytrec_eval\n"
            "f, = glob.glob(sysconfig.get_paths()['purelib'] + '/megatron/core/datasets/helpers_cpp.*.so')\n"
            "s = u.spec_from_file_location('helpers_cpp', f, loader=m.ExtensionFileLoader('helpers_cpp', f))\n"
            "s.loader.exec_module(u.module_from_spec(s))\n")
    p = subprocess.run([str(v / "bin" / "python"), "-c", load], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]


def test_check_script_cpu_smoke_over_bundle_and_image_stand_ins(bundle, tmp_path):
    """scripts/gpu_check.sh --cpu-smoke in a venv of CPU torch + image stand-ins + the bundle's pins."""
    v, ready = venv(sys._base_executable if hasattr(sys, "_base_executable") else sys.executable, "py311")
    if not ready:
        pip(v, "install", "-q", "torch==2.13.0")  # the CPU build on local disk; the image has its CUDA torch
        used = gpu_bundle.closure(bundle, "3.12.3")["image_used"]
        pins = {n: ver for n, ver in used.items()}
        pins["pytest"] = None  # the image has pytest; the check runs it
        # uv (the test extra) installs the ~2 GB of stand-ins in ~25 s where pip took ~80 s, the same versions
        # (checked: `pip list` of both venvs equal); torch above stays pip's, from the local CPU wheel.
        for _ in range(len(pins)):  # the image's version where Python 3.11 has it (numpy 2.5 needs 3.12)
            p = subprocess.run([sys.executable, "-m", "uv", "pip", "install", "-q", "--python", str(v / "bin" / "python"),
                                "--compile-bytecode",  # as pip does: this machine sets PYTHONDONTWRITEBYTECODE=1
                                *(f"{n}=={ver}" if ver else n for n, ver in pins.items())], capture_output=True, text=True,
                               timeout=900)
            nomatch = (re.search(r"([A-Za-z0-9_.-]+)==\S+ depends on Python", p.stderr)
                       or re.search(r"there is no version of ([A-Za-z0-9_.-]+)==", p.stderr))
            if p.returncode == 0 or not nomatch:
                break
            pins[gpu_bundle.canonicalize_name(nomatch.group(1))] = None
        assert p.returncode == 0, p.stderr[-3000:]
        (v / "standins.txt").write_text("".join(f"{n}=={ver}\n" if ver else f"{n}\n" for n, ver in pins.items()))
        (v / ".ready").touch()
    wheels = REHEARSAL / f"wheels-cp311-{KEY}"
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_bundle.py"), "build", "--dir", str(wheels),
                        "--python-version", "3.11", "--python-full-version", "3.11.7", "--no-tokenizer",
                        "--max-mib", "1000"], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    shutil.copy(bundle / gpu_bundle.TOKENIZER, wheels / gpu_bundle.TOKENIZER)

    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{v / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    p = subprocess.run([str(REPO / "scripts" / "gpu_check.sh"), str(out), "--bundle", str(wheels), "--cpu-smoke",
                        "--budget-s", "900"], env=env, capture_output=True, text=True, cwd=REPO, timeout=1000)
    summary = json.loads((out / "summary.json").read_text())
    steps = summary["steps"]
    why = {k: s.get("log_tail", s.get("reason", ""))[-1500:] for k, s in steps.items() if s["status"] != "ok"}
    assert p.returncode == 0 and not why, f"{p.stdout[-1500:]}\n{json.dumps(why, indent=1)}"
    assert list(steps) == ["environment", "install", "imports", "nccl", "pytest_gpu", "data", "stage1", "bench"]
    assert steps["environment"]["result"]["python"].startswith("3.11") and str(v) in steps["environment"]["result"]["executable"]
    assert steps["imports"]["result"]["failed"] == {} and steps["imports"]["result"]["ok"] > 30
    assert steps["nccl"]["result"] == {"backend": "gloo", "world_size": 1, "device": "cpu", "all_reduce_ok": True}
    assert steps["stage1"]["stage1_nemo_written"]
    assert set(steps["bench"]["result"]["bench.json"]["systems"]) == {"ours", "reference"}
    assert sorted(os.listdir(out)) == ["bench.json", "check.log", "pytest_gpu.xml", "summary.json"]  # <= 8 files
