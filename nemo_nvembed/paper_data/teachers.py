"""Hard-negative mining teachers for `nemo_nvembed.prepare`: BM25, an NVEmbed .nemo, any HF encoder.

``--teacher`` takes ``bm25``, a ``.nemo`` path, or ``hf:<name or folder>``: a Hugging Face
encoder loaded with sentence-transformers (the paper mined with a fine-tuned E5 encoder; e.g.
``hf:intfloat/e5-large-v2`` online, or a local folder offline). Dense teachers search exactly
with faiss (``IndexFlatIP`` on L2-normalised embeddings). Each teacher builds its index per set
(``for_corpus``) and answers ``retrieve`` like the teachers of :mod:`nemo_nvembed.converters.mining`,
whose selection rules (TopK-PercPos) then apply unchanged.
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np

from nemo_nvembed.checks.errors import UserError
from nemo_nvembed.converters.mining import Bm25Teacher, DenseTeacher


class SentenceTransformerTeacher:
    """A sentence-transformers model: cosine similarity, exact faiss search."""

    name = "sentence-transformers"
    zero_means_no_match = False

    def __init__(self, model, doc_texts: list[str], query_prefix: str, doc_prefix: str, batch_size: int = 64,
                 progress: bool = True):
        import faiss  # optional dependency (only dense teachers need it)

        self.model, self.query_prefix, self.batch_size, self.progress = model, query_prefix, batch_size, progress
        emb = self._embed([doc_prefix + t for t in doc_texts])  # [n_docs, d]
        self.index = faiss.IndexFlatIP(emb.shape[1])
        self.index.add(emb)

    def _embed(self, texts: list[str]) -> np.ndarray:
        emb = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                normalize_embeddings=True, show_progress_bar=self.progress)
        return np.ascontiguousarray(emb, dtype=np.float32)  # [n, d], unit rows

    def retrieve(self, queries: list[str], positives: list[list[int]], k: int, progress: bool = True) -> Iterator:
        k = min(k, self.index.ntotal)
        if not queries:
            return
        q = self._embed([self.query_prefix + t for t in queries])  # [n_q, d]
        scores, idx = self.index.search(q, k)  # [n_q, k] each, best first
        for r in range(len(q)):
            pos_emb = self.index.reconstruct_batch(np.asarray(positives[r], dtype=np.int64))  # [p, d]
            yield idx[r], scores[r], pos_emb @ q[r]


class TeacherFactory:
    """Loads the teacher's model once; `for_corpus` builds the per-set teacher over its documents."""

    def __init__(self, spec: str, query_prefix: str = "", doc_prefix: str = "", batch_size: int = 64,
                 progress: bool = True):
        self.spec, self.query_prefix, self.doc_prefix = spec, query_prefix, doc_prefix
        self.batch_size, self.progress = batch_size, progress
        self.model = None
        if spec == "bm25":
            self.kind = "bm25"
        elif spec.startswith("hf:"):
            from sentence_transformers import SentenceTransformer  # heavy (torch, transformers): hf teachers only

            self.kind = "hf"
            self.model = SentenceTransformer(spec[3:], device="cpu" if not _cuda() else None)
        elif spec.endswith(".nemo"):  # heavy imports (torch, megatron) for a .nemo teacher only
            from nemo_nvembed.models.network import NVEmbedNetwork

            self.kind = "nemo"
            self.model = NVEmbedNetwork.load(spec)
        else:
            raise UserError(f"--teacher {spec!r}: use bm25, a .nemo file or hf:<sentence-transformers model>")

    def for_corpus(self, doc_texts: list[str], instruction: Optional[str]):
        """A teacher over `doc_texts`; `instruction` is the query instruction of a .nemo teacher."""
        if self.kind == "bm25":
            return Bm25Teacher(doc_texts)
        if self.kind == "hf":
            return SentenceTransformerTeacher(self.model, doc_texts, self.query_prefix, self.doc_prefix,
                                              self.batch_size, self.progress)
        return DenseTeacher(self.model, doc_texts, instruction, self.batch_size, progress=self.progress)


def _cuda() -> bool:
    import torch  # heavy: a bm25 teacher never loads it

    return torch.cuda.is_available()
