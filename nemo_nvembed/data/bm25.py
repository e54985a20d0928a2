"""BM25 (``bm25s``) over our own tokenisation, and what "the same text" means.

Used by the demo corpus, STS negatives, the BM25 mining teacher and the near-duplicate filter, so
every one of them splits and compares texts the same way.
"""
from __future__ import annotations

import functools
import re

import numpy as np

TOKEN = re.compile(r"(?u)\b\w\w+\b")


def normalize(text: str) -> str:
    return " ".join(text.split())


def text_key(text: str) -> str:
    """What 'the same text' means for dedupe and the train/held-out overlap check."""
    return normalize(text).lower()


@functools.cache
def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def tokenize(text: str) -> list[str]:
    stop = _stopwords()
    return [t for t in TOKEN.findall(text.lower()) if t not in stop]


class Bm25:
    """bm25s over our own tokenisation, so queries and documents are split the same way."""

    def __init__(self, texts: list[str]):
        import bm25s

        self.model = bm25s.BM25()
        self.model.index([tokenize(t) or ["<empty>"] for t in texts], show_progress=False)
        self.n = len(texts)

    def scores(self, query: str) -> np.ndarray:
        toks = [t for t in tokenize(query) if t in self.model.vocab_dict]
        return self.model.get_scores(toks) if toks else np.zeros(self.n, dtype=np.float32)
