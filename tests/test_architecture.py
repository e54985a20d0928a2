"""The code map's rules (README "Code map"): import layers, thin commands, small files."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO

COMMANDS = ("train", "encode", "convert", "export", "evaluate", "mine", "convert_data", "mteb_encoder", "bench",
            "demo", "demo_data", "prepare", "mteb_table", "teacher_embed", "compare_runs")


def test_import_contracts_hold():
    """import-linter with the contracts in pyproject.toml: commands > library layers; no command imported."""
    lint = Path(sys.executable).with_name("lint-imports")
    p = subprocess.run([str(lint)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert "0 broken" in p.stdout


def test_commands_are_thin_and_files_small():
    package = REPO / "nemo_nvembed"
    top = {f.stem for f in package.glob("*.py")} - {"__init__", "paths"}
    assert top == set(COMMANDS), f"top-level modules are the commands (and paths.py); found {sorted(top - set(COMMANDS))}"
    long_commands = {c: n for c in COMMANDS if (n := len((package / f"{c}.py").read_text().splitlines())) >= 100}
    assert not long_commands, f"commands must stay under 100 lines: {long_commands}"
    sources = [*package.rglob("*.py"), *(REPO / "tests").rglob("*.py")]
    big = {str(f.relative_to(REPO)): n for f in sources if (n := len(f.read_text().splitlines())) > 400}
    assert not big, f"source files over 400 lines: {big}"


def test_no_import_circle_anywhere():
    """No module imports itself back through any chain (the layers contract only orders packages;
    this covers modules inside one package too), lazy imports inside functions included."""
    import grimp

    graph = grimp.build_graph("nemo_nvembed")
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    state, stack, circles = {}, [], []

    def visit(m):  # depth-first search; a grey node met again closes a circle
        state[m] = "grey"
        stack.append(m)
        for n in edges[m]:
            if state.get(n) == "grey":
                circles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = "black"

    for m in modules:
        if m not in state:
            visit(m)
    # a package's __init__ importing its own submodules is how a package exposes them, not a circle
    circles = [c for c in circles if not any(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(c, c[1:]))]
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)
