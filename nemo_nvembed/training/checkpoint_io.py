"""Training checkpoints written whole or not at all, each with a manifest written last.

A save goes through four phases: the data is written to ``<name>.tmp-<pid>`` and fsynced
(``tmp_written``), renamed onto ``<name>`` (``renamed``), then a manifest ``<name>.manifest.json``
(size, sha256, step) is written the same way (``manifest_written``). A checkpoint counts only once
its manifest is there and matches the file (:func:`verify`), so a crash at any point leaves either
the previous set of checkpoints or the new one, never a checkpoint that looks finished but is not.
:mod:`nemo_nvembed.training.resume` picks the newest verified checkpoint.

``phase`` is a no-op hook called after each phase; the fault-injection tests replace it to kill
the process there.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

MANIFEST_SUFFIX = ".manifest.json"
TMP_MARK = ".tmp-"
FORMAT = 1


def manifest_path(ckpt: str | Path) -> Path:
    return Path(f"{ckpt}{MANIFEST_SUFFIX}")


def sha256_file(path: str | Path, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(folder: str | Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | Path, write) -> None:
    """``write(file)`` into a temporary next to ``path``, fsync, rename onto ``path``."""
    path = str(path)
    tmp = f"{path}{TMP_MARK}{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")


def verify(ckpt: str | Path) -> tuple[int | None, str | None]:
    """-> (step, None) when the checkpoint matches its manifest, else (None, why not)."""
    ckpt, man = Path(ckpt), manifest_path(ckpt)
    if not man.is_file():
        return None, "no manifest (its save did not finish)"
    try:
        m = json.loads(man.read_text())
        size, sha, step = int(m["size"]), str(m["sha256"]), int(m["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"unreadable manifest {man.name} ({e})"
    if not ckpt.is_file():
        return None, "file missing"
    actual = ckpt.stat().st_size
    if actual != size:
        return None, f"size {actual} bytes, manifest says {size} (truncated or overwritten)"
    if sha256_file(ckpt) != sha:
        return None, "sha256 does not match the manifest (corrupted)"
    return step, None


class ManifestCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO: atomic file, then its manifest; removal takes the manifest too."""

    def phase(self, name: str, path: str) -> None:
        """Called after each save phase (tmp_written, renamed, manifest_written); a test hook."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = str(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        hasher = _HashingWriter()

        def write(f):
            hasher.file = f
            torch.save(checkpoint, hasher)
            self.phase("tmp_written", path)

        manifest_path(path).unlink(missing_ok=True)  # an overwritten checkpoint is unverified until done
        write_atomic(path, write)
        self.phase("renamed", path)
        manifest = {"format": FORMAT, "file": os.path.basename(path), "size": hasher.size, "sha256": hasher.hexdigest(),
                    "step": int(checkpoint.get("global_step", -1))}
        write_atomic(manifest_path(path), lambda f: f.write((json.dumps(manifest, indent=1) + "\n").encode()))
        self.phase("manifest_written", path)

    def remove_checkpoint(self, path) -> None:
        manifest_path(path).unlink(missing_ok=True)  # first: a half-removed checkpoint is unverified
        super().remove_checkpoint(path)


class _HashingWriter:
    """A write-only file object that hashes what passes through it (no second read of the file)."""

    def __init__(self):
        self.file, self._h, self.size = None, hashlib.sha256(), 0

    def write(self, b) -> int:
        self._h.update(b)
        self.size += len(b)
        return self.file.write(b)

    def flush(self) -> None:
        self.file.flush()

    def hexdigest(self) -> str:
        return self._h.hexdigest()
