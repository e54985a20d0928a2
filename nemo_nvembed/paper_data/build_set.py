"""One manifest set -> training rows, with a report of what was read, filtered and written.

Per kind (NV-Embed section 4.2):

* retrieval: (query, positive) pairs, from one table (``fields.query``/``fields.pos``) or a
  BEIR/MTEB layout (corpus, queries, qrels with score > 0). Subsampled to ``samples`` pairs
  (uniformly), then hard negatives are mined by the teacher over the set's documents (the
  corpus, or the positives of at most ``mining.pool_rows`` rows of the table) with the
  TopK-PercPos rules of :mod:`nemo_nvembed.converters.mining`;
* classification / clustering: q+ = text, d+ = label text (``label_texts`` maps label values to
  texts, e.g. AmazonReviews' star index), negatives = up to ``num_negatives`` other labels.
  A multi-valued label column (``label_sep``: arXiv ``categories``) gives one example per
  category, and none of the text's own categories is ever its negative. Subsampled to
  ``samples`` examples, stratified by the positive label;
* sts: the rule of :mod:`nemo_nvembed.converters.nonretrieval` (score >= min_score: a->b and b->a;
  BM25 negatives from rank 2, none related > max_neg_relevance), subsampled uniformly. Scores are
  first mapped linearly from the set's ``score_range`` [lowest, most similar] onto the paper's 0-5
  scale, so min_score 4 and max_neg_relevance 2.5 mean the same on every set (STS22 runs 1-4).

``dedup`` removes training texts that BM25 finds near-identical to each named evaluation split
(convert_data's symmetric relative-score rule), of the set's own repository or of the filter's
``hf_id`` (MTEB's clustering test sets drawn from the same raw pools; MTEB's STS12-16 test sets,
whose SemEval files STS Benchmark reuses). A row is dropped when any of its texts (an STS pair:
either sentence) is near one; every dropped row is counted with its reason, per evaluation split.
The report's ``wanted`` is the manifest's count (Table 6), ``available`` what the source gives after
conversion and filtering (before subsampling), ``written`` the rows of the set's file.
"""
from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from nemo_nvembed.converters.mining import mine, to_rows
from nemo_nvembed.converters.nonretrieval import (LabelRow, PairRow, drop_duplicates_and_conflicts, label_id,
                                                 sts_examples)
from nemo_nvembed.data.beir_folder import RetrievalSet
from nemo_nvembed.data.bm25 import text_key
from nemo_nvembed.data.neardup import DedupReport, exclude_near_duplicates
from nemo_nvembed.paper_data import subsample
from nemo_nvembed.paper_data.sources import SourceError, column_values, load_table


@dataclass
class SetReport:
    name: str
    task: str
    kind: str
    source: str
    wanted: int = 0  # the manifest's count (Table 6)
    available: int = 0  # examples (or pairs) the source gives after conversion and filters
    rows_read: int = 0
    converted: int = 0  # examples (or pairs) built, before subsampling
    filtered: Counter = field(default_factory=Counter)  # reason -> rows or examples
    subsampled_out: int = 0
    written: int = 0
    label_set_padded: int = 0  # label-set examples with fewer negatives than num_negatives (all other labels)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["filtered"] = dict(sorted(self.filtered.items()))
        return d


@dataclass(frozen=True)
class MultiLabelRow:
    where: str
    text: str
    labels: tuple


def _texts(table, role, spec, hf_id):
    """Column values of a text role; None for a missing or empty text (the caller counts it)."""
    out = []
    for v in column_values(table, role, spec, hf_id):
        if not isinstance(v, str) or not v.strip():
            out.append(None)
        else:
            out.append(v)
    return out


def build_set(s, num_negatives: int, mining, teachers, registry, source_dir, seed: int,
              progress: bool = True) -> tuple[list[dict], SetReport]:
    """Rows of one set (`s`: a validated manifest entry) and its report."""
    where = s.config or (f"file {s.data_files}" if s.data_files else None)
    report = SetReport(s.name, s.task, s.kind, f"{s.hf_id}" + (f" ({where})" if where else "") + f" [{s.split}]",
                       wanted=s.samples)
    rng = random.Random(f"{seed}:{s.name}")
    if s.kind == "retrieval":
        rows = _retrieval(s, num_negatives, mining, teachers, registry, source_dir, rng, report, progress)
    elif s.kind == "sts":
        rows = _sts(s, num_negatives, source_dir, rng, report, progress)
    else:
        rows = _label_set(s, num_negatives, source_dir, rng, report)
    if s.kind in ("retrieval", "sts"):  # label sets are short by design (padded by the loader); these are not
        full = [r for r in rows if len(r["neg"]) >= num_negatives]
        if len(full) < len(rows):
            report.filtered[f"fewer than {num_negatives} negatives left after mining"] += len(rows) - len(full)
        rows = full
    report.available = report.converted
    report.written = len(rows)
    report.label_set_padded = sum(len(r["neg"]) < num_negatives for r in rows)
    return rows, report


# ---------------------------------------------------------------------------------------- retrieval
def _retrieval(s, k, mining, teachers, registry, source_dir, rng, report, progress):
    if s.beir is not None:
        data = _beir_set(s, source_dir, report)
    else:
        data = _pair_set(s, source_dir, report, mining.pool_rows, rng)
    pairs = [(q, d) for q, docs in data.qrels.items() for d in docs]
    report.converted = len(pairs)
    kept = subsample.uniform(pairs, s.samples, rng)
    report.subsampled_out = len(pairs) - len(kept)
    qrels: dict[str, dict[str, float]] = defaultdict(dict)
    for q, d in kept:
        qrels[q][d] = 1.0
    wanted = set(qrels)
    order = [i for i, q in enumerate(data.query_ids) if q in wanted]
    sub = RetrievalSet(data.doc_ids, data.doc_texts, [data.query_ids[i] for i in order],
                       [data.query_texts[i] for i in order], dict(qrels), len(kept))
    teacher = teachers.for_corpus(data.doc_texts, registry[s.task].train_instruction)
    mined, summary = mine(sub, teacher, mining.top_k, k, mining.perc_pos, progress=progress)
    for reason, n in summary.skipped_pairs.items():
        report.filtered[f"pair skipped: {reason}"] += n
    for reason, n in summary.skipped_queries.items():
        report.filtered[f"query skipped: {reason}"] += n
    return list(to_rows(mined, sub, s.task))


def _pair_set(s, source_dir, report, pool_rows: int, rng) -> RetrievalSet:
    """Pairs of one table; the documents mined from are the positives of at most `pool_rows` rows
    (uniform; PAQ has 65M rows), of which `samples` pairs are then kept."""
    table = _table(s, source_dir)
    report.rows_read = len(table)
    if len(table) > pool_rows:
        table = table.select(sorted(rng.sample(range(len(table)), pool_rows)))
        report.filtered[f"rows outside the mining pool (mining.pool_rows {pool_rows})"] += report.rows_read - pool_rows
    qs = _texts(table, "query", s.fields.query, s.hf_id)
    ps = _texts(table, "pos", s.fields.pos, s.hf_id)
    doc_of, docs, query_of, queries = {}, [], {}, []
    qrels: dict[str, dict[str, float]] = defaultdict(dict)
    for q, p in zip(qs, ps):
        if q is None or p is None:
            report.filtered["empty query or positive text"] += 1
            continue
        dk, qk = text_key(p), text_key(q)
        if dk not in doc_of:
            doc_of[dk] = f"d{len(docs)}"
            docs.append(p)
        if qk not in query_of:
            query_of[qk] = f"q{len(queries)}"
            queries.append(q)
        if doc_of[dk] in qrels[query_of[qk]]:
            report.filtered["duplicate (query, positive) pair"] += 1
        qrels[query_of[qk]][doc_of[dk]] = 1.0
    return RetrievalSet([f"d{i}" for i in range(len(docs))], docs, [f"q{i}" for i in range(len(queries))],
                        queries, dict(qrels), report.rows_read)


def _beir_set(s, source_dir, report) -> RetrievalSet:
    corpus = load_table(s.hf_id, s.beir.corpus.config, s.beir.corpus.split, source_dir, revision=s.revision)
    queries = load_table(s.hf_id, s.beir.queries.config, s.beir.queries.split, source_dir, revision=s.revision)
    qrels_t = _table(s, source_dir)
    for name, t, cols in (("corpus", corpus, ["_id", s.fields.pos]), ("queries", queries, ["_id", s.fields.query]),
                          ("qrels", qrels_t, ["query-id", "corpus-id", "score"])):
        for c in cols:
            if c not in t.column_names:
                raise SourceError(f"{s.hf_id} {name}: no column {c!r} (columns: {', '.join(t.column_names)})")
    titles = corpus["title"] if "title" in corpus.column_names else [None] * len(corpus)
    doc_texts = [(f"{t} {x}".strip() if t else x) or "" for t, x in zip(titles, corpus[s.fields.pos])]
    doc_ids = [str(i) for i in corpus["_id"]]
    report.rows_read = len(qrels_t)
    qrels: dict[str, dict[str, float]] = defaultdict(dict)
    known_docs = set(doc_ids)
    for i, (q, d, sc) in enumerate(zip(qrels_t["query-id"], qrels_t["corpus-id"], qrels_t["score"]), 1):
        try:
            sc = float(sc)
        except (TypeError, ValueError):
            raise SourceError(f"{s.hf_id} qrels: row {i}: score {sc!r} is not a number") from None
        if sc <= 0:
            report.filtered["qrels score <= 0 (not relevant)"] += 1
        elif str(d) not in known_docs:
            report.filtered["qrels document not in the corpus"] += 1
        else:
            qrels[str(q)][str(d)] = sc
    qids = [str(i) for i in queries["_id"]]
    qtexts = [t or "" for t in queries[s.fields.query]]
    missing = set(qrels) - set(qids)
    for q in missing:
        report.filtered["qrels query not in the queries table"] += len(qrels.pop(q))
    return RetrievalSet(doc_ids, doc_texts, qids, qtexts, dict(qrels), report.rows_read)


# ---------------------------------------------------------------------------------------- sts
def _sts(s, k, source_dir, rng, report, progress):
    table = _table(s, source_dir)
    report.rows_read = len(table)
    lo, hi = (float(x) for x in s.score_range)
    a = _texts(table, "text1", s.fields.text1, s.hf_id)
    b = _texts(table, "text2", s.fields.text2, s.hf_id)
    scores = list(column_values(table, "score", s.fields.score, s.hf_id))
    rows = []
    for i, (x, y, sc) in enumerate(zip(a, b, scores)):
        if x is None or y is None:
            report.filtered["empty text"] += 1
        elif not isinstance(sc, (int, float)) or isinstance(sc, bool):
            raise SourceError(f"{s.hf_id}: row {i + 1}: fields.score {s.fields.score!r}: expected a number, got {sc!r}")
        elif not lo - 1e-9 <= sc <= hi + 1e-9:
            raise SourceError(f"{s.hf_id}: row {i + 1}: fields.score {s.fields.score!r}: {sc} is outside the set's "
                              f"score_range [{lo:g}, {hi:g}]")
        else:  # onto the paper's 0-5 scale, where its thresholds (4, 2.5) are stated
            rows.append(PairRow(f"row {i + 1}", x, y, 5.0 * (float(sc) - lo) / (hi - lo)))
    rows = _dedup(s, rows, ["text1", "text2"], source_dir, report)
    drops: Counter = Counter()
    examples, stats = sts_examples(rows, s.task, k, s.min_score, s.max_neg_relevance, drops, progress=progress)
    report.filtered.update(drops)
    report.filtered.update({k_: v for k_, v in stats.items() if k_.startswith("examples skipped")})
    report.converted = len(examples)
    kept = subsample.uniform(examples, s.samples, rng)
    report.subsampled_out = len(examples) - len(kept)
    return kept


# ---------------------------------------------------------------------------------------- labels
def _label_set(s, k, source_dir, rng, report):
    table = _table(s, source_dir)
    report.rows_read = len(table)
    texts = _texts(table, "text", s.fields.text, s.hf_id)
    labels = list(column_values(table, "label", s.fields.label, s.hf_id))
    mapping = {str(key): v for key, v in s.label_texts.items()}
    rows = []
    for i, (t, lab) in enumerate(zip(texts, labels)):
        where = f"{s.hf_id}: row {i + 1}"
        if t is None:
            report.filtered["empty text"] += 1
            continue
        if isinstance(lab, (list, tuple)):
            values = [str(x) for x in lab]
        elif s.label_sep is not None:
            values = [x for x in str(lab).split(s.label_sep) if x.strip()]
        else:
            values = [str(lab)]
        if mapping:
            unknown = [v for v in values if v not in mapping]
            if unknown:
                raise SourceError(f"{where}: fields.label {s.fields.label!r}: value {unknown[0]!r} has no entry in "
                                  f"label_texts (keys: {', '.join(mapping)})")
            values = [mapping[v] for v in values]
        values = [v for v in dict.fromkeys(values) if v.strip()]
        if not values:
            report.filtered["empty label"] += 1
            continue
        rows.append(MultiLabelRow(where, t, tuple(values)))
    multi = s.label_sep is not None or any(len(r.labels) > 1 for r in rows)
    if multi:
        seen, kept = set(), []
        for r in rows:
            if text_key(r.text) in seen:
                report.filtered["duplicate text (the first is kept)"] += 1
            else:
                seen.add(text_key(r.text))
                kept.append(r)
        rows = kept
    else:
        drops: Counter = Counter()
        single = drop_duplicates_and_conflicts([LabelRow(r.where, r.text, r.labels[0]) for r in rows], drops)
        report.filtered.update(drops)
        rows = [MultiLabelRow(r.where, r.text, (r.label,)) for r in single]
    rows = _dedup(s, rows, ["text"], source_dir, report)
    universe = sorted({lab for r in rows for lab in r.labels})
    if len(universe) < 2:
        raise SourceError(f"{s.hf_id}: {len(universe)} distinct label(s) left: a label set needs at least 2")
    pairs = [(r, lab) for r in rows for lab in r.labels]  # one example per (text, category)
    report.converted = len(pairs)
    kept = subsample.stratified(pairs, s.samples, lambda p: p[1], rng)
    report.subsampled_out = len(pairs) - len(kept)
    out = []
    for r, lab in kept:
        others = [x for x in universe if x not in r.labels]
        if not others:
            report.filtered["every label is one of the text's own (no negative)"] += 1
            continue
        negs = rng.sample(others, min(k, len(others)))
        out.append({"task": s.task, "query": r.text, "pos": lab, "neg": negs, "pos_id": label_id(lab),
                    "neg_ids": [label_id(x) for x in negs]})
    return out


def _table(s, source_dir):
    """The set's own table: its config's split, or its raw file read as that split."""
    return load_table(s.hf_id, s.config, s.split, source_dir, data_files=s.data_files, revision=s.revision)


# ---------------------------------------------------------------------------------------- eval filter
def _dedup(s, rows, text_fields, source_dir, report):
    """Rows minus near-duplicates of each `dedup` split in turn, counted per split (a row near two
    splits is counted at the first)."""
    for d in s.dedup or []:
        hf_id = d.hf_id or s.hf_id
        table = load_table(hf_id, d.config, d.split, source_dir, data_files=d.data_files, revision=d.revision)
        eval_texts = []
        for f in d.fields:
            for v in column_values(table, f"dedup.{f}", f, hf_id):
                for t in (v if isinstance(v, (list, tuple)) else [v]):  # MTEB clustering rows may hold lists
                    if isinstance(t, str) and t.strip():
                        eval_texts.append(t)
        dr = DedupReport(sources=[f"{hf_id} [{d.split}]"])
        rows = exclude_near_duplicates(rows, text_fields, eval_texts, d.threshold, dr)
        if dr.rows_removed:
            report.filtered[f"near-duplicate of {hf_id} [{d.split}] (BM25 >= {d.threshold})"] += dr.rows_removed
    return rows
