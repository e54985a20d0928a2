"""Non-retrieval data -> contrastive training JSONL (NV-Embed, arXiv 2405.17428, section 4.2).

``python -m nemo_nvembed.convert_data {classification,clustering,sts} --input FILE --task NAME --out OUT``

* ``classification``: q+ = the text, d+ = its label text, negatives = other label texts (drawn at
  random, seeded). Stratified subsampling over labels: at most ``--max-per-label`` examples each.
  A set with fewer than ``--num-negatives`` + 1 labels gives every other label as the negatives
  (1 for a binary set); the loader pads such label-set examples and the loss masks the padding
  (nemo_nvembed/data/jsonl.py), so binary sets enter stage 2 as they are.
* ``clustering``: the same construction with q+ = a title (S2S) or an abstract (P2P) column and
  d+ = its category.
* ``sts``: every pair scored >= ``--min-score`` (4) gives two examples, a -> b and b -> a. Hard
  negatives are mined with BM25 over all texts of the file, from rank 2 on (rank 1, normally the
  query itself, is never taken), excluding the query, the positive and every text paired with the
  query at a score > ``--max-neg-relevance`` (2.5); BM25 score-0 texts (no shared term) are not
  hard negatives and are not taken either.

Input: ``.jsonl``, ``.csv``, ``.tsv`` or ``.parquet``, columns named on the command line. A bad
row stops the conversion with file, line (row for parquet) and column named. Exact duplicates are
dropped (and counted); a text given two different labels is dropped whole (and counted).

``--exclude EVAL [--exclude-col C ...]`` removes training rows that BM25 finds near-identical to
evaluation content (section 4.2), and reports how many: raw BM25 scores are only comparable within
one query, so each score is divided by the query's score against itself (one index over both
sides), and the test is symmetric, as in the demo data: a training text and an evaluation text
are near-duplicates when each, as the query, reaches ``--dedup-threshold`` of its self score on
the other. Identical texts (whitespace and case normalised) are always near-duplicates.

Output ids: ``label:<label>`` for label texts, ``text:<hash of the normalised text>`` for STS
texts, so that equal texts share one id (the loss's false-negative key) across files. The
output is shuffled (seeded) and can be checked with ``nemo_nvembed.data.jsonl.load_examples``.
"""
from __future__ import annotations

import functools
import hashlib
import random
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from nemo_nvembed.checks.errors import UserError
from nemo_nvembed.data.bm25 import Bm25, text_key
from nemo_nvembed.data.jsonl_io import write_jsonl
from nemo_nvembed.data.neardup import DedupReport, exclude_near_duplicates
from nemo_nvembed.data.tables import ConvertError, as_label, as_score, as_text, iter_rows
from nemo_nvembed.data.tasks import TaskRegistry


# ---------------------------------------------------------------------------------------- near-duplicates
def read_eval_texts(paths: list[str], columns: list[str]) -> list[str]:
    texts = []
    for path in paths:
        for _, row in iter_rows(path, columns):
            texts += [v for v in row.values() if isinstance(v, str) and v.strip()]
    return texts


# ---------------------------------------------------------------------------------------- classification / clustering
@dataclass(frozen=True)
class LabelRow:
    where: str
    text: str
    label: str


def drop_duplicates_and_conflicts(rows: list[LabelRow], drops: Counter) -> list[LabelRow]:
    """Keep the first of identical (text, label) rows; drop every row of a text given two labels."""
    labels = defaultdict(set)
    for r in rows:
        labels[text_key(r.text)].add(r.label)
    seen, kept = set(), []
    for r in rows:
        key = text_key(r.text)
        if len(labels[key]) > 1:
            drops["text given different labels (all its rows dropped)"] += 1
        elif key in seen:
            drops["duplicate text with the same label"] += 1
        else:
            seen.add(key)
            kept.append(r)
    return kept


def label_examples(rows: list[LabelRow], task: str, num_negatives: int, max_per_label: int | None,
                   rng: random.Random, source: str, label_col: str) -> tuple[list[dict], dict[str, tuple[int, int]]]:
    """q+ = text, d+ = label, negatives = other labels; -> (examples, {label: (rows, kept)})."""
    groups: dict[str, list[LabelRow]] = defaultdict(list)
    for r in rows:
        groups[r.label].append(r)
    labels = sorted(groups)
    if len(labels) < 2:
        shown = ", ".join(repr(x) for x in labels)
        raise ConvertError(
            f"{source}: column {label_col!r}: {len(labels)} distinct label(s) left ({shown}), but each example "
            f"needs 1 positive and at least 1 other label as its negative")
    k = min(num_negatives, len(labels) - 1)  # every other label when there are fewer (see the docstring)
    out, counts = [], {}
    for label in labels:
        chosen = groups[label]
        if max_per_label is not None and len(chosen) > max_per_label:
            keep = set(rng.sample(range(len(chosen)), max_per_label))
            chosen = [r for i, r in enumerate(chosen) if i in keep]  # input order
        counts[label] = (len(groups[label]), len(chosen))
        others = [x for x in labels if x != label]
        for r in chosen:
            negs = rng.sample(others, k)
            out.append({"task": task, "query": r.text, "pos": label, "neg": negs,
                        "pos_id": label_id(label), "neg_ids": [label_id(x) for x in negs]})
    return out, counts


def label_id(label: str) -> str:
    return "label:" + label


def text_id(text: str) -> str:
    return "text:" + hashlib.blake2b(text_key(text).encode(), digest_size=8).hexdigest()


# ---------------------------------------------------------------------------------------- STS
@dataclass(frozen=True)
class PairRow:
    where: str
    text1: str
    text2: str
    score: float


def sts_examples(rows: list[PairRow], task: str, num_negatives: int, min_score: float, max_neg_relevance: float,
                 drops: Counter, progress: bool = True) -> tuple[list[dict], Counter]:
    """Pairs scored >= min_score -> a->b and b->a, BM25 hard negatives (rules in the module docstring)."""
    rel: dict[tuple[str, str], float] = {}
    kept: list[PairRow] = []
    for r in rows:
        a, b = text_key(r.text1), text_key(r.text2)
        if a == b:
            drops["both texts identical"] += 1
        elif (a, b) in rel:
            drops["duplicate pair (the first is kept)"] += 1
        else:
            rel[(a, b)] = rel[(b, a)] = r.score
            kept.append(r)
    pool: dict[str, str] = {}  # key -> first spelling: "all texts" of the file
    for r in kept:
        pool.setdefault(text_key(r.text1), r.text1)
        pool.setdefault(text_key(r.text2), r.text2)
    keys = list(pool)
    if not keys:
        return [], Counter()
    related: dict[str, set[str]] = defaultdict(set)  # texts paired with q at a score > max_neg_relevance
    for (a, b), s in rel.items():
        if s > max_neg_relevance:
            related[a].add(b)
    index = Bm25([pool[k] for k in keys])
    stats = Counter()

    @functools.lru_cache(maxsize=None)
    def negatives(q: str, pos: str) -> tuple[int, ...]:
        scores = index.scores(pool[q])  # [n_pool]
        m = min(len(keys), num_negatives + 3 + len(related[q]))  # enough to survive every exclusion
        top = np.argpartition(-scores, m - 1)[:m] if m < len(keys) else np.arange(len(keys))
        top = top[np.lexsort((top, -scores[top]))]  # rank order, ties by first appearance
        out = []
        for j in top[1:]:  # rank >= 2
            k = keys[j]
            if k == q or k == pos:
                continue
            if k in related[q]:
                stats["candidates dropped: relevance > max_neg_relevance to the query"] += 1
            elif scores[j] <= 0:
                stats["candidates dropped: BM25 score 0 (no shared term)"] += 1
            else:
                out.append(int(j))
                if len(out) == num_negatives:
                    break
        return tuple(out)

    examples = []
    positives = [r for r in kept if r.score >= min_score]
    drops[f"pair scored below {min_score} (not a positive pair)"] += len(kept) - len(positives)
    for r in tqdm(positives, desc="sts negatives", unit="pair", disable=not progress):
        for q, p in ((r.text1, r.text2), (r.text2, r.text1)):
            negs = negatives(text_key(q), text_key(p))
            if not negs:
                stats["examples skipped: no negative left"] += 1
                continue
            if len(negs) < num_negatives:
                stats[f"examples written with fewer than {num_negatives} negatives"] += 1
            neg_texts = [pool[keys[j]] for j in negs]
            examples.append({"task": task, "query": q, "pos": p, "neg": neg_texts, "pos_id": text_id(p),
                             "neg_ids": [text_id(t) for t in neg_texts]})
    return examples, stats


# ---------------------------------------------------------------------------------------- the command's work
def convert(kind: str, input_path: str, task: str, out: str, tasks: str, num_negatives: int, seed: int,
            exclude: list[str], exclude_cols: list[str] | None, dedup_threshold: float, *,
            text_col: str | None = None, label_col: str | None = None, max_per_label: int | None = None,
            text1_col: str | None = None, text2_col: str | None = None, score_col: str | None = None,
            min_score: float | None = None, max_neg_relevance: float | None = None) -> dict:
    """``python -m nemo_nvembed.convert_data``: read, filter, convert, write (rules in the module docstring).

    `kind` is classification/clustering (with `text_col`, `label_col`, `max_per_label`) or sts (with
    `text1_col`, `text2_col`, `score_col`, `min_score`, `max_neg_relevance`); `exclude` are evaluation
    files whose `exclude_cols` texts must not be trained on."""
    if num_negatives < 1:
        raise UserError(f"--num-negatives must be >= 1, got {num_negatives}")
    if exclude and not exclude_cols:
        raise UserError("--exclude needs --exclude-col (the evaluation file's text column(s))")
    registry = TaskRegistry.from_yaml(tasks)
    entry = registry[task]  # an unknown task lists close matches
    if entry.kind != kind:
        raise UserError(f"task {entry.name} is of kind {entry.kind!r} in {registry.source}, "
                        f"not {kind!r}; pick a {kind} task")
    rng = random.Random(seed)
    drops: Counter = Counter()
    report = DedupReport(sources=list(exclude))
    eval_texts = read_eval_texts(exclude, exclude_cols) if exclude else []
    if kind == "sts":
        cols = [text1_col, text2_col, score_col]
        rows = [PairRow(w, as_text(w, cols[0], v[cols[0]]), as_text(w, cols[1], v[cols[1]]),
                        as_score(w, cols[2], v[cols[2]])) for w, v in iter_rows(input_path, cols)]
        n_read = len(rows)
        if exclude:
            rows = exclude_near_duplicates(rows, ["text1", "text2"], eval_texts, dedup_threshold, report)
        examples, stats = sts_examples(rows, entry.name, num_negatives, min_score, max_neg_relevance, drops)
        counts = {}
    else:
        cols = [text_col, label_col]
        rows = [LabelRow(w, as_text(w, cols[0], v[cols[0]]), as_label(w, cols[1], v[cols[1]]))
                for w, v in iter_rows(input_path, cols)]
        n_read = len(rows)
        rows = drop_duplicates_and_conflicts(rows, drops)
        if exclude:
            rows = exclude_near_duplicates(rows, ["text"], eval_texts, dedup_threshold, report)
        examples, counts = label_examples(rows, entry.name, num_negatives, max_per_label, rng, input_path, label_col)
        stats = Counter()
    print(f"read {n_read} rows from {input_path}")
    for reason, k in sorted(drops.items()):
        print(f"  dropped: {reason}: {k}")
    print(report.format())
    for reason, k in sorted(stats.items()):
        print(f"  {reason}: {k}")
    if counts:
        capped = sum(1 for a, b in counts.values() if b < a)
        print(f"labels: {len(counts)} ({capped} capped at --max-per-label {max_per_label})")
        for label, (a, b) in counts.items():
            print(f"  {label!r}: {b} of {a}")
    if not examples:
        raise ConvertError(f"{input_path}: no training example left of {n_read} rows (counts above); nothing written")
    rng.shuffle(examples)
    n = write_jsonl(out, examples)
    print(f"wrote {out}: {n} examples (task {entry.name}, at most {num_negatives} negatives each)")
    return {"rows_read": n_read, "dropped": dict(drops), "near_duplicates_removed": report.rows_removed,
            "examples": n, "labels": counts, "stats": dict(stats)}
