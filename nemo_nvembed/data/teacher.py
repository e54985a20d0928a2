"""A teacher's embeddings of every training text (``train.distill.embeddings``): one file, looked up by text.

The file (written by :func:`nemo_nvembed.converters.teacher.build_teacher_embeddings`) is a
``torch.save`` dict: ``hashes`` [n] int64 (8-byte blake2b of each text, as the loss hashes keys),
``vectors`` [n, e] float16 (L2-normalised), ``model`` (what made them) and ``sources`` (the files
they were built from). Queries are embedded without an instruction: the teacher takes none.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import torch

from nemo_nvembed.checks.errors import UserError
from nemo_nvembed.data.jsonl import DataError, Example


def text_hash(text: str) -> int:
    """A text's stable 8-byte blake2b hash as a signed int64 (the loss's passage keys; the teacher file's keys)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


class TeacherTable:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"train.distill.embeddings: {self.path} does not exist (build it with "
                            f"python -m nemo_nvembed.teacher_embed --data <training JSONL> --out {self.path})")
        saved = torch.load(self.path, map_location="cpu", weights_only=True)
        missing = {"hashes", "vectors", "model"} - set(saved)
        if missing:
            raise UserError(f"{self.path}: not a teacher-embeddings file (no {sorted(missing)})")
        self.vectors = saved["vectors"].float()  # [n, e]
        self.model = saved["model"]
        self.row = {int(h): i for i, h in enumerate(saved["hashes"].tolist())}

    def check(self, examples: Sequence[Example], data_path: str | Path) -> None:
        """Every query and passage of ``examples`` must have a vector: else one error naming the lines."""
        bad = [e.line for e in examples if any(text_hash(t) not in self.row for t in (e.query, e.pos, *e.neg))]
        if bad:
            shown = ", ".join(str(n) for n in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
            raise DataError(f"{data_path}: lines {shown}: a query or passage has no vector in {self.path} "
                            f"(built from other data; rebuild it with python -m nemo_nvembed.teacher_embed)")

    def lookup(self, texts: Sequence[str]) -> torch.Tensor:
        """[len(texts), e] the texts' vectors (``check`` has vouched for them)."""
        return self.vectors[[self.row[text_hash(t)] for t in texts]]
