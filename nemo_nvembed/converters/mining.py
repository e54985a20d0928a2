"""Hard-negative mining for a retrieval set in BEIR layout -> training JSONL.

``python -m nemo_nvembed.mine --model X.nemo|bm25 --corpus corpus.jsonl --queries queries.jsonl
--qrels qrels.tsv --out train.jsonl --task NAME [--top-k 50] [--num-negatives 7] [--perc-pos 0.95]``

NV-Embed mines the hard negatives of its retrieval sets with an existing encoder (section 4.2).
Here the teacher is an NVEmbed ``.nemo`` (exact inner-product search over L2-normalised
embeddings, ``faiss.IndexFlatIP``) or BM25 (``bm25s``, with the demo's tokeniser).

Positive-aware selection (NV-Retriever "TopK-PercPos", arXiv 2407.15831), for each
(query, relevant document) pair, walking the top-k candidates in rank order:

* drop every document the qrels mark relevant (score > 0) for the query, and every candidate whose
  text equals a positive's text (whitespace and case normalised: a copy of the positive);
* drop candidates scoring at or above ``perc_pos`` x the positive's score (likely false negatives).
  The positive's score is computed directly, whether or not it is in the top k. For a negative
  positive score (possible with cosine) the margin is taken below it, ``s - (1 - perc_pos)|s|``,
  so the threshold always lies under the positive;
* BM25 only: drop candidates with score 0 (no shared term: not a hard negative, just filler);
* drop repeats of an already kept negative's text; keep the first ``num_negatives`` left.

One output line per (query, relevant document) pair, with ``pos_id``/``neg_ids`` of the form
``<task>:<corpus id>`` so that ids of different corpora blended into one batch never collide
(they are the loss's false-negative keys). Pairs left with 1 to num_negatives - 1 negatives are
written and reported (train with ``allow_negative_resampling``); pairs left with none are skipped
and reported. Nothing is dropped silently: a summary at the end counts what was read, written and
skipped, and why.
"""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from nemo_nvembed.checks.errors import UserError
from nemo_nvembed.data.beir_folder import RetrievalSet, read_retrieval_set
from nemo_nvembed.data.bm25 import Bm25, text_key
from nemo_nvembed.data.jsonl_io import write_jsonl
from nemo_nvembed.data.tasks import TaskRegistry

MAX_LISTED = 20


# ---------------------------------------------------------------------------------------- teachers
Hits = Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]  # (candidate idx [k], their scores [k], positives' scores)


class Bm25Teacher:
    """BM25 over the corpus; scores are raw BM25 (comparable within one query only)."""

    name = "bm25"
    zero_means_no_match = True

    def __init__(self, doc_texts: list[str]):
        self.index = Bm25(doc_texts)

    def retrieve(self, queries: list[str], positives: list[list[int]], k: int, progress: bool = True) -> Hits:
        k = min(k, self.index.n)
        for q, pos in zip(tqdm(queries, desc="bm25", unit="query", disable=not progress), positives):
            scores = self.index.scores(q)  # [n_docs]
            top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
            top = top[np.lexsort((top, -scores[top]))]  # by score, ties by corpus position
            yield top, scores[top], scores[np.asarray(pos, dtype=np.int64)]


class DenseTeacher:
    """An NVEmbed model: cosine similarity, exact search with faiss (IndexFlatIP on unit vectors)."""

    name = "dense"
    zero_means_no_match = False

    def __init__(self, model, doc_texts: list[str], instruction: str | None, batch_size: int = 32,
                 max_length: int | None = None, precision: str = "fp32", chunk: int = 10000,
                 progress: bool = True):
        import faiss  # optional dependency (``mine`` and dense teachers only; not in the GPU bundle)

        self.model, self.instruction = model, instruction
        self.kw = dict(batch_size=batch_size, max_length=max_length, precision=precision)
        self.index = faiss.IndexFlatIP(model.cfg.backbone.hidden_size)
        # Corpus in chunks: only the index holds the [n_docs, d] matrix.
        bar = tqdm(total=len(doc_texts), desc="encode corpus", unit="doc", disable=not progress)
        for start in range(0, len(doc_texts), chunk):
            self.index.add(self._embed(doc_texts[start:start + chunk], None))
            bar.update(min(chunk, len(doc_texts) - start))
        bar.close()

    def _embed(self, texts: list[str], instruction: str | None) -> np.ndarray:
        import faiss  # optional dependency, as above

        emb = np.ascontiguousarray(self.model.encode(texts, instruction=instruction, **self.kw).numpy())  # [n, d]
        faiss.normalize_L2(emb)
        return emb

    def retrieve(self, queries: list[str], positives: list[list[int]], k: int, progress: bool = True,
                 chunk: int = 1024) -> Hits:
        k = min(k, self.index.ntotal)
        bar = tqdm(total=len(queries), desc="dense search", unit="query", disable=not progress)
        for start in range(0, len(queries), chunk):
            q = self._embed(queries[start:start + chunk], self.instruction)  # [c, d]
            scores, idx = self.index.search(q, k)  # [c, k] each, best first
            for r in range(len(q)):
                pos = positives[start + r]
                pos_emb = self.index.reconstruct_batch(np.asarray(pos, dtype=np.int64))  # [p, d]
                yield idx[r], scores[r], pos_emb @ q[r]
                bar.update(1)
        bar.close()


# ---------------------------------------------------------------------------------------- selection
def perc_pos_threshold(pos_score: float, perc_pos: float) -> float:
    """Negatives must score strictly below this (TopK-PercPos; see the module docstring)."""
    return float(pos_score) - (1.0 - perc_pos) * abs(float(pos_score))


def select_negatives(cand: Sequence[int], cand_scores: Sequence[float], relevant: set[int], pos_keys: set[str],
                     doc_keys: Sequence[str], threshold: float, num_negatives: int,
                     zero_means_no_match: bool, drops: Counter) -> list[int]:
    """Candidates (rank order) -> up to num_negatives negatives; each drop is counted in `drops`
    (candidates after the last kept negative are not looked at)."""
    kept, kept_keys = [], set()
    for j, s in zip(cand, cand_scores):
        j, key = int(j), doc_keys[int(j)]
        if j in relevant:
            drops["relevant (a positive)"] += 1
        elif key in pos_keys:
            drops["same text as a positive"] += 1
        elif not key:
            drops["empty text"] += 1
        elif zero_means_no_match and s <= 0:
            drops["BM25 score 0 (no shared term)"] += 1
        elif s >= threshold:
            drops["score >= perc_pos x positive's"] += 1
        elif key in kept_keys:
            drops["same text as a kept negative"] += 1
        else:
            kept.append(j)
            kept_keys.add(key)
            if len(kept) == num_negatives:
                break
    return kept


@dataclass
class MinedPair:
    query_id: str
    pos: int  # corpus index
    pos_score: float
    negs: list[int]
    neg_scores: list[float]
    threshold: float


@dataclass
class MineSummary:
    queries_read: int = 0
    qrels_rows: int = 0
    queries_written: int = 0
    pairs_written: int = 0
    pairs_short: int = 0  # written with 1..num_negatives-1 negatives
    short_query_ids: list[str] = field(default_factory=list)
    skipped_queries: Counter = field(default_factory=Counter)  # reason -> queries
    skipped_pairs: Counter = field(default_factory=Counter)  # reason -> (query, doc) pairs
    ignored_qrels: Counter = field(default_factory=Counter)  # reason -> qrels rows
    candidate_drops: Counter = field(default_factory=Counter)  # reason -> candidates
    no_negative_query_ids: list[str] = field(default_factory=list)

    def format(self, num_negatives: int) -> str:
        skipped = sum(self.skipped_queries.values())
        rows = [
            f"queries read {self.queries_read}, written {self.queries_written}, skipped {skipped}",
            *[f"  skipped query: {r}: {n}" for r, n in sorted(self.skipped_queries.items())],
            f"qrels rows {self.qrels_rows}",
            *[f"  ignored qrels row: {r}: {n}" for r, n in sorted(self.ignored_qrels.items())],
            f"(query, positive) pairs written {self.pairs_written}, of which {self.pairs_short} with fewer "
            f"than {num_negatives} negatives (load them with allow_negative_resampling)",
            *[f"  skipped pair: {r}: {n}" for r, n in sorted(self.skipped_pairs.items())],
            "candidates dropped (summed over pairs)",
            *[f"  {r}: {n}" for r, n in sorted(self.candidate_drops.items())],
        ]
        for name, ids in (("fewer negatives", self.short_query_ids), ("no negative", self.no_negative_query_ids)):
            ids = list(dict.fromkeys(ids))  # a query with several positives is listed once
            if ids:
                more = f" ... and {len(ids) - MAX_LISTED} more" if len(ids) > MAX_LISTED else ""
                rows.append(f"queries with {name}: {', '.join(ids[:MAX_LISTED])}{more}")
        return "\n".join(rows)


def mine(data: RetrievalSet, teacher, top_k: int = 50, num_negatives: int = 7, perc_pos: float = 0.95,
         progress: bool = True) -> tuple[list[MinedPair], MineSummary]:
    """Mine every (query, relevant document) pair of `data` with `teacher` (Bm25Teacher/DenseTeacher)."""
    if top_k < 1 or num_negatives < 1 or not 0 < perc_pos <= 1:
        raise ValueError(f"need top_k >= 1, num_negatives >= 1, 0 < perc_pos <= 1; got "
                         f"{top_k}, {num_negatives}, {perc_pos}")
    summary = MineSummary(queries_read=len(data.query_ids), qrels_rows=data.qrels_rows)
    doc_index = {d: i for i, d in enumerate(data.doc_ids)}
    doc_keys = [text_key(t) for t in data.doc_texts]
    known_queries = set(data.query_ids)
    for qid, rels in data.qrels.items():
        if qid not in known_queries:
            summary.ignored_qrels["query id not in the queries file"] += len(rels)

    todo_q, todo_pos = [], []  # query index, relevant corpus indices (qrels order)
    for i, (qid, text) in enumerate(zip(data.query_ids, data.query_texts)):
        rels = data.qrels.get(qid, {})
        pos = []
        for did, rel in rels.items():
            if rel <= 0:
                summary.ignored_qrels["relevance <= 0 (judged non-relevant)"] += 1
            elif did not in doc_index:
                summary.ignored_qrels["document id not in the corpus"] += 1
            else:
                pos.append(doc_index[did])
        if not text.strip():
            summary.skipped_queries["empty query text"] += 1
        elif not pos:
            summary.skipped_queries["no relevant document (qrels score > 0) in the corpus"] += 1
        else:
            todo_q.append(i)
            todo_pos.append(pos)

    pairs: list[MinedPair] = []
    hits = teacher.retrieve([data.query_texts[i] for i in todo_q], todo_pos, top_k, progress=progress)
    for (cand, cand_scores, pos_scores), i, pos in zip(hits, todo_q, todo_pos):  # hits first: runs to its end
        qid, relevant = data.query_ids[i], set(pos)
        pos_keys = {doc_keys[p] for p in pos}
        written = 0
        for p, ps in zip(pos, pos_scores):
            if not doc_keys[p]:
                summary.skipped_pairs["empty positive text"] += 1
                continue
            thr = perc_pos_threshold(ps, perc_pos)
            negs = select_negatives(cand, cand_scores, relevant, pos_keys, doc_keys, thr, num_negatives,
                                    teacher.zero_means_no_match, summary.candidate_drops)
            if not negs:
                summary.skipped_pairs["no negative left after filtering"] += 1
                summary.no_negative_query_ids.append(qid)
                continue
            by_doc = {int(j): float(s) for j, s in zip(cand, cand_scores)}
            pairs.append(MinedPair(qid, p, float(ps), negs, [by_doc[j] for j in negs], thr))
            written += 1
            if len(negs) < num_negatives:
                summary.pairs_short += 1
                summary.short_query_ids.append(qid)
        if written:
            summary.queries_written += 1
            summary.pairs_written += written
        else:
            summary.skipped_queries["no (query, positive) pair with a negative"] += 1
    return pairs, summary


def to_rows(pairs: list[MinedPair], data: RetrievalSet, task: str) -> Iterator[dict]:
    qtext = dict(zip(data.query_ids, data.query_texts))
    for m in pairs:
        yield {"task": task, "query": qtext[m.query_id], "pos": data.doc_texts[m.pos],
               "neg": [data.doc_texts[j] for j in m.negs], "pos_id": f"{task}:{data.doc_ids[m.pos]}",
               "neg_ids": [f"{task}:{data.doc_ids[j]}" for j in m.negs]}


def mine_to_jsonl(model: str, corpus: str, queries: str, qrels: str, out: str, task: str, tasks: str, top_k: int,
                  num_negatives: int, perc_pos: float, instruction: str | None, batch_size: int,
                  max_length: int | None, precision: str, tp: int) -> MineSummary:
    """``python -m nemo_nvembed.mine``: read a BEIR set, mine with `model` (a .nemo or ``bm25``), write `out`."""
    if top_k < 1 or num_negatives < 1 or not 0 < perc_pos <= 1:
        raise UserError("need --top-k >= 1, --num-negatives >= 1 and 0 < --perc-pos <= 1")
    entry = TaskRegistry.from_yaml(tasks)[task]  # an unknown task lists close matches
    try:
        data = read_retrieval_set(corpus, queries, qrels)  # a bad line raises a UserError naming it
    except (OSError, UnicodeDecodeError) as e:  # a missing or unreadable file
        raise UserError(str(e)) from None
    if entry.kind != "retrieval":
        print(f"note: task {entry.name} is of kind {entry.kind}; mining is meant for retrieval sets", file=sys.stderr)
    print(f"read {len(data.doc_ids)} documents, {len(data.query_ids)} queries, {data.qrels_rows} qrels rows")

    rank_zero = True
    if model == "bm25":
        teacher = Bm25Teacher(data.doc_texts)
        print("teacher: BM25 (bm25s)")
    else:  # heavy imports (torch, megatron) only for a dense teacher: `mine --model bm25` starts fast
        from nemo_nvembed.models.network import NVEmbedNetwork
        from nemo_nvembed.parallel import distributed

        instruction = instruction if instruction is not None else entry.eval_instruction
        encoder = NVEmbedNetwork.load(model, tp=tp)
        rank_zero = distributed.is_global_rank_zero()
        print(f"teacher: {model}; query instruction: {instruction!r}")
        teacher = DenseTeacher(encoder, data.doc_texts, instruction, batch_size, max_length, precision)

    pairs, summary = mine(data, teacher, top_k, num_negatives, perc_pos)
    if not pairs:
        print(summary.format(num_negatives))
        raise UserError(f"no (query, positive) pair kept a negative; {out} not written")
    if rank_zero:
        n = write_jsonl(out, to_rows(pairs, data, entry.name))
        print(f"wrote {out}: {n} lines (task {entry.name}, top-k {top_k}, perc_pos {perc_pos})")
        print(summary.format(num_negatives))
    return summary
