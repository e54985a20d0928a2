"""Argument and path checks a command runs before it loads a model, so a typo costs seconds."""
from __future__ import annotations

import os
from pathlib import Path

from nemo_nvembed.checks.errors import UserError


def positive(option: str, value: int) -> int:
    if value is None or value < 1:
        raise UserError(f"{option} must be >= 1, got {value}")
    return value


def input_file(path: str | os.PathLike, what: str) -> Path:
    """An existing, readable regular file."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} {p}: no such file")
    if p.is_dir():
        raise UserError(f"{what} {p}: is a directory, not a file")
    if not os.access(p, os.R_OK):
        raise UserError(f"{what} {p}: not readable")
    return p


def _writable_parent(p: Path, what: str) -> None:
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"{what} {p}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{what} {p}: folder {folder} is not writable")


def output_file(path: str | os.PathLike, what: str) -> Path:
    """A path a file can be written to: its folder exists and is writable, and it is not a folder."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{what} {p}: is a directory; give a file name")
    _writable_parent(p, what)
    if p.exists() and not os.access(p, os.W_OK):
        raise UserError(f"{what} {p}: exists and is not writable")
    return p


def new_output_folder(path: str | os.PathLike, what: str) -> Path:
    """A folder to create (or an empty one): its parent exists and is writable."""
    p = Path(path)
    if p.exists() and (not p.is_dir() or any(p.iterdir())):
        raise UserError(f"{what} {p}: exists and is not an empty folder")
    _writable_parent(p, what)
    return p
