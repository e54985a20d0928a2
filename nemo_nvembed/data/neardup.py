"""The one near-duplicate filter (paper section 4.2: training content near evaluation content is removed).

Raw BM25 scores are only comparable within one query, so each score is divided by the query's score
against itself (one index over both sides), and the test is symmetric: a training text and an
evaluation text are near-duplicates when each, as the query, reaches the threshold of its self score
on the other (one-way ratios flag short texts that share a single word). Identical texts (whitespace
and case normalised) are always near-duplicates.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from nemo_nvembed.data.bm25 import Bm25, text_key


@dataclass
class DedupReport:
    eval_texts: int = 0
    sources: list[str] = field(default_factory=list)
    threshold: float = 0.0
    rows_before: int = 0
    rows_removed: int = 0
    texts_removed: int = 0
    examples: list[tuple[str, str, float]] = field(default_factory=list)  # (train text, eval text, ratio)

    def format(self) -> str:
        if not self.sources:
            return "near-duplicate filter: off (no --exclude)"
        rows = [f"near-duplicate filter: {self.eval_texts} evaluation texts from {', '.join(self.sources)}, "
                f"threshold {self.threshold}: removed {self.rows_removed} of {self.rows_before} training rows "
                f"({self.texts_removed} distinct texts)"]
        rows += [f"  e.g. {_clip(t)!r} ~ {_clip(e)!r} ({r:.2f})" for t, e, r in self.examples[:3]]
        return "\n".join(rows)


def _clip(text: str, n: int = 70) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def near_duplicates(texts: list[str], eval_texts: list[str], threshold: float) -> dict[int, tuple[int, float]]:
    """{training text index: (closest evaluation text index, its symmetric relative score)} for the
    near-duplicates (rule in the module docstring). Cost: one BM25 query per training text, plus one
    per evaluation text that some training text comes close to."""
    if not 0 < threshold <= 1:
        raise ValueError(f"dedup threshold must be in (0, 1], got {threshold}")
    out: dict[int, tuple[int, float]] = {}
    if not texts or not eval_texts:
        return out
    exact = {}
    for h, t in enumerate(eval_texts):
        exact.setdefault(text_key(t), h)
    n_eval = len(eval_texts)
    index = Bm25(eval_texts + texts)

    @functools.lru_cache(maxsize=4096)
    def from_eval(h: int) -> np.ndarray:  # [n_train]: eval text h as the query, over its self score
        s = index.scores(eval_texts[h])
        return s[n_eval:] / max(float(s[h]), 1e-9)

    from tqdm.auto import tqdm

    for k, t in enumerate(tqdm(texts, desc="near-duplicate filter", unit="text", leave=False)):
        if text_key(t) in exact:
            out[k] = (exact[text_key(t)], 1.0)
            continue
        s = index.scores(t)  # [n_eval + n_train]
        own = float(s[n_eval + k])
        if own <= 0:
            continue
        fwd = s[:n_eval] / own  # [n_eval]
        best = None
        for h in np.flatnonzero(fwd >= threshold):
            r = min(float(fwd[h]), float(from_eval(int(h))[k]))
            if r >= threshold and (best is None or r > best[1]):
                best = (int(h), r)
        if best is not None:
            out[k] = best
    return out


def exclude_near_duplicates(rows: list, text_fields: list[str], eval_texts: list[str], threshold: float,
                            report: DedupReport) -> list:
    """Rows (objects with the given text attributes) minus those with a text near an evaluation text."""
    report.rows_before, report.eval_texts, report.threshold = len(rows), len(eval_texts), threshold
    unique = list(dict.fromkeys(text_key(getattr(r, f)) for r in rows for f in text_fields))
    first = {}
    for r in rows:
        for f in text_fields:
            first.setdefault(text_key(getattr(r, f)), getattr(r, f))
    hits = near_duplicates([first[u] for u in unique], eval_texts, threshold)
    bad = {unique[k] for k in hits}
    report.texts_removed = len(bad)
    report.examples = sorted(((first[unique[k]], eval_texts[h], r) for k, (h, r) in hits.items()),
                             key=lambda x: -x[2])
    kept = [r for r in rows if not any(text_key(getattr(r, f)) in bad for f in text_fields)]
    report.rows_removed = len(rows) - len(kept)
    return kept
