"""What ``make demo`` shows on the terminal and what it keeps in its log file.

The terminal gets the demo's steps, one live progress line per training stage (step, loss, the
latest validation score, elapsed time) and the results; everything the child commands print (NeMo's
configuration dumps, library warnings, Lightning's progress bar, the exact commands) goes to one log
file, named at the start and again on failure with its last lines.
"""
from __future__ import annotations

import codecs
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

# Lightning's progress bar ("... | 7/15 [00:41<...") and the training step's logged loss.
BAR_STEP = re.compile(r"\|\s*(\d+)/(?:\d+|\?)\s*\[")
LOSS = re.compile(r"train_loss=([0-9.]+)")
VALIDATION = re.compile(r"\[validation\] step (\d+): nDCG@10 ([0-9.]+)")


class DemoFailed(RuntimeError):
    pass


class Console:
    def __init__(self, log_path: Path):
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(self.log_path, "a", encoding="utf-8", buffering=1)
        self.t0 = time.time()

    def say(self, msg: str) -> None:
        line = f"[demo {time.time() - self.t0:5.0f}s] {msg}"
        print(line, flush=True)
        self.log.write(f"\n{line}\n")

    def note(self, msg: str) -> None:
        """A detail line: terminal and log."""
        print(f"  {msg}", flush=True)
        self.log.write(f"  {msg}\n")

    def _fail(self, cmd: list[str], rc: int) -> None:
        self.log.flush()
        tail = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-30:]
        print("\n".join(tail), file=sys.stderr)
        raise DemoFailed(f"command failed (exit {rc}): {shlex.join(cmd)}\nfull output: {self.log_path}")

    def run(self, cmd: list[str], cwd: Path) -> str:
        """Run a command, its stderr into the log; returns its stdout (also logged)."""
        self.log.write(f"$ {shlex.join(cmd)}\n")
        self.log.flush()
        proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.log.write(proc.stdout)
        if proc.returncode:
            self._fail(cmd, proc.returncode)
        return proc.stdout

    def run_stage(self, cmd: list[str], cwd: Path, label: str, max_steps: int) -> None:
        """Run a training stage, all of its output into the log, one updating progress line here."""
        self.log.write(f"$ {shlex.join(cmd)}\n")
        self.log.flush()
        start, step, loss, val = time.time(), 0, None, None
        # Bytes, decoded here: text mode would turn the progress bar's "\r" redraws into new lines.
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        decode = codecs.getincrementaldecoder("utf-8")("replace").decode
        buf = ""
        for raw in iter(lambda: proc.stdout.read1(4096), b""):
            chunk = decode(raw)
            self.log.write(chunk)
            buf += chunk
            *parts, buf = re.split(r"[\r\n]", buf)
            for part in parts:
                if m := BAR_STEP.search(part):
                    step = max(step, int(m.group(1)))
                if m := LOSS.search(part):
                    loss = float(m.group(1))
                if m := VALIDATION.search(part):
                    val = f"held-out nDCG@10 {float(m.group(2)):.3f} at step {m.group(1)}"
            shown = [f"{label}: step {step:>3}/{max_steps}"]
            if loss is not None:
                shown.append(f"loss {loss:.3f}")
            if val:
                shown.append(val)
            shown.append(f"{time.time() - start:4.0f}s")
            print("\r  " + "  ".join(shown) + " ", end="", flush=True)
        print(flush=True)
        if rc := proc.wait():
            self._fail(cmd, rc)
