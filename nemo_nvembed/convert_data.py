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

import argparse
import csv
import functools
import hashlib
import json
import math
import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from nemo_nvembed.demo_data import Bm25, text_key
from nemo_nvembed.paths import CONF

FORMATS = (".jsonl", ".csv", ".tsv", ".parquet")
KIND = {"classification": "classification", "clustering": "clustering", "sts": "sts"}


class ConvertError(ValueError):
    """Invalid input; the message names the file, the line (or row) and the column."""


# ---------------------------------------------------------------------------------------- reading
def iter_rows(path: str | Path, columns: list[str]) -> Iterator[tuple[str, dict]]:
    """Yield ("FILE:line N" or "FILE:row N", {column: value}) for the named columns, streaming.

    Missing columns fail before any row is yielded (CSV header, parquet schema) or at the first
    JSONL line that lacks one. Blank JSONL lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _iter_jsonl(path, columns)
    elif suffix in (".csv", ".tsv"):
        yield from _iter_csv(path, columns, "\t" if suffix == ".tsv" else ",")
    elif suffix == ".parquet":
        yield from _iter_parquet(path, columns)
    else:
        raise ConvertError(f"{path}: unsupported format {suffix!r}; use one of {', '.join(FORMATS)}")


def _iter_jsonl(path: Path, columns: list[str]):
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:line {lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConvertError(f"{where}: malformed JSON: {e.msg} (column {e.colno})") from None
            if not isinstance(obj, dict):
                raise ConvertError(f"{where}: expected a JSON object")
            missing = [c for c in columns if c not in obj]
            if missing:
                raise ConvertError(f"{where}: no field {missing[0]!r} (fields on this line: {', '.join(obj)})")
            yield where, {c: obj[c] for c in columns}


def _iter_csv(path: Path, columns: list[str], delimiter: str):
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = reader.fieldnames or []
        missing = [c for c in columns if c not in header]
        if missing:
            raise ConvertError(f"{path}: no column {missing[0]!r} in the header (columns: {', '.join(header)})")
        last = reader.line_num
        for row in reader:
            where = f"{path}:line {last + 1}"  # a record may span lines (quoted newlines): its first
            last = reader.line_num
            short = [c for c in columns if row.get(c) is None]
            if short:
                raise ConvertError(f"{where}: column {short[0]!r} missing (the row has fewer fields than the header)")
            yield where, {c: row[c] for c in columns}


def _iter_parquet(path: Path, columns: list[str]):
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    missing = [c for c in columns if c not in names]
    if missing:
        raise ConvertError(f"{path}: no column {missing[0]!r} (columns: {', '.join(names)})")
    n = 0
    for batch in pf.iter_batches(batch_size=10000, columns=columns):
        for row in batch.to_pylist():
            n += 1
            yield f"{path}:row {n}", row


def as_text(where: str, column: str, value) -> str:
    if not isinstance(value, str):
        raise ConvertError(f"{where}: column {column!r}: expected text, got {type(value).__name__} {value!r}")
    if not value.strip():
        raise ConvertError(f"{where}: column {column!r}: empty text")
    return value


def as_label(where: str, column: str, value) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ConvertError(f"{where}: column {column!r}: expected a label (text or integer), "
                           f"got {type(value).__name__} {value!r}")
    value = str(value)
    if not value.strip():
        raise ConvertError(f"{where}: column {column!r}: empty label")
    return value


def as_score(where: str, column: str, value) -> float:
    try:
        score = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        score = math.nan
    if not math.isfinite(score):
        raise ConvertError(f"{where}: column {column!r}: expected a finite number, got {value!r}")
    return score


# ---------------------------------------------------------------------------------------- near-duplicates
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


def read_eval_texts(paths: list[str], columns: list[str]) -> list[str]:
    texts = []
    for path in paths:
        for _, row in iter_rows(path, columns):
            texts += [v for v in row.values() if isinstance(v, str) and v.strip()]
    return texts


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

    from tqdm.auto import tqdm

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


# ---------------------------------------------------------------------------------------- output
def write_jsonl(path: str | Path, rows) -> int:
    """Write one JSON object per line atomically (temporary file renamed into place); -> lines."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


# ---------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--input", required=True, help="data file: .jsonl, .csv, .tsv or .parquet")
    common.add_argument("--task", required=True, help="task name in the registry, written on every line")
    common.add_argument("--out", required=True, help="training JSONL to write")
    common.add_argument("--tasks", default=str(CONF / "tasks.yaml"), help="task registry (default: conf/tasks.yaml)")
    common.add_argument("--num-negatives", type=int, default=7)
    common.add_argument("--exclude", action="append", default=[],
                        help="evaluation file whose content must not be trained on (repeatable)")
    common.add_argument("--exclude-col", nargs="+", default=None, help="text column(s) of the --exclude file(s)")
    common.add_argument("--dedup-threshold", type=float, default=0.9,
                        help="symmetric relative BM25 score at or above which a row is a near-duplicate")
    common.add_argument("--seed", type=int, default=0)

    p = argparse.ArgumentParser(prog="python -m nemo_nvembed.convert_data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="kind", required=True)
    for kind, what in (("classification", "the label"), ("clustering", "the category")):
        s = sub.add_parser(kind, parents=[common], help=f"q+ = text, d+ = {what}, negatives = other labels")
        s.add_argument("--text-col", required=True, help="text column" + (" (title or abstract)" if kind == "clustering" else ""))
        s.add_argument("--label-col", required=True, help=f"column holding {what}")
        s.add_argument("--max-per-label", type=int, default=None, help="cap of examples per label (stratified)")
    s = sub.add_parser("sts", parents=[common], help="pairs scored >= min-score, both directions, BM25 negatives")
    s.add_argument("--text1-col", required=True)
    s.add_argument("--text2-col", required=True)
    s.add_argument("--score-col", required=True)
    s.add_argument("--min-score", type=float, default=4.0, help="a pair is positive at this score or above")
    s.add_argument("--max-neg-relevance", type=float, default=2.5,
                   help="texts paired with the query above this score are never its negatives")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    from nemo_nvembed.data.tasks import TaskConfigError, TaskRegistry, UnknownTaskError

    if args.num_negatives < 1:
        raise SystemExit(f"--num-negatives must be >= 1, got {args.num_negatives}")
    if args.exclude and not args.exclude_col:
        raise SystemExit("--exclude needs --exclude-col (the evaluation file's text column(s))")
    try:
        registry = TaskRegistry.from_yaml(args.tasks)
        task = registry[args.task]
    except (TaskConfigError, UnknownTaskError) as e:  # an unknown task lists close matches
        raise SystemExit(f"error: {e}") from None
    if task.kind != KIND[args.kind]:
        raise SystemExit(f"task {task.name} is of kind {task.kind!r} in {registry.source}, "
                         f"not {KIND[args.kind]!r}; pick a {KIND[args.kind]} task")
    rng = random.Random(args.seed)
    drops: Counter = Counter()
    report = DedupReport(sources=list(args.exclude))
    try:
        eval_texts = read_eval_texts(args.exclude, args.exclude_col) if args.exclude else []
        if args.kind == "sts":
            cols = [args.text1_col, args.text2_col, args.score_col]
            rows = [PairRow(w, as_text(w, cols[0], v[cols[0]]), as_text(w, cols[1], v[cols[1]]),
                            as_score(w, cols[2], v[cols[2]])) for w, v in iter_rows(args.input, cols)]
            n_read = len(rows)
            if args.exclude:
                rows = exclude_near_duplicates(rows, ["text1", "text2"], eval_texts, args.dedup_threshold, report)
            examples, stats = sts_examples(rows, task.name, args.num_negatives, args.min_score,
                                           args.max_neg_relevance, drops)
            counts = {}
        else:
            cols = [args.text_col, args.label_col]
            rows = [LabelRow(w, as_text(w, cols[0], v[cols[0]]), as_label(w, cols[1], v[cols[1]]))
                    for w, v in iter_rows(args.input, cols)]
            n_read = len(rows)
            rows = drop_duplicates_and_conflicts(rows, drops)
            if args.exclude:
                rows = exclude_near_duplicates(rows, ["text"], eval_texts, args.dedup_threshold, report)
            examples, counts = label_examples(rows, task.name, args.num_negatives, args.max_per_label, rng,
                                              args.input, args.label_col)
            stats = Counter()
    except ConvertError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"read {n_read} rows from {args.input}")
    for reason, k in sorted(drops.items()):
        print(f"  dropped: {reason}: {k}")
    print(report.format())
    for reason, k in sorted(stats.items()):
        print(f"  {reason}: {k}")
    if counts:
        capped = sum(1 for a, b in counts.values() if b < a)
        print(f"labels: {len(counts)} ({capped} capped at --max-per-label {args.max_per_label})")
        for label, (a, b) in counts.items():
            print(f"  {label!r}: {b} of {a}")
    if not examples:
        raise SystemExit(f"error: {args.input}: no training example left of {n_read} rows (counts above); "
                         f"nothing written")
    rng.shuffle(examples)
    n = write_jsonl(args.out, examples)
    print(f"wrote {args.out}: {n} examples (task {task.name}, at most {args.num_negatives} negatives each)")
    return {"rows_read": n_read, "dropped": dict(drops), "near_duplicates_removed": report.rows_removed,
            "examples": n, "labels": counts, "stats": dict(stats)}


if __name__ == "__main__":
    main()
