"""The one BEIR reader: ``corpus.jsonl`` ({"_id", "title"?, "text"}), ``queries.jsonl`` ({"_id",
"text"}) and a qrels TSV (query-id, corpus-id, score; header optional). Used by evaluation,
validation during training and hard-negative mining; bad input names file and line.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nemo_nvembed.checks.errors import UserError
from nemo_nvembed.data.jsonl_io import iter_objects


class BeirError(UserError):
    """A BEIR file that cannot be read as such; the message names the file and line."""


@dataclass
class RetrievalSet:
    doc_ids: list[str]
    doc_texts: list[str]  # "title text" when a title is given
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, float]]  # query id -> {doc id: relevance}, as read (all scores)
    qrels_rows: int = 0


def read_records(path: str | Path, fields: tuple[str, ...]) -> list[dict]:
    """JSONL rows whose `fields` are strings."""
    rows = []
    for where, obj in iter_objects(path, BeirError):
        for name in fields:
            if not isinstance(obj.get(name), str):
                raise BeirError(f"{where}: field {name!r} must be a string")
        rows.append(obj)
    return rows


def read_qrels(path: str | Path) -> tuple[dict[str, dict[str, float]], int]:
    """BEIR qrels TSV (query-id, corpus-id, score; optional header) -> ({qid: {docid: score}}, rows)."""
    qrels: dict[str, dict[str, float]] = {}
    rows = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if lineno == 1 and parts[0] == "query-id":
                continue
            if len(parts) != 3:
                raise BeirError(f"{path}:{lineno}: expected 3 tab-separated fields "
                                 f"(query-id, corpus-id, score), got {len(parts)}")
            try:
                rel = float(parts[2])
            except ValueError:
                raise BeirError(f"{path}:{lineno}: score {parts[2]!r} is not a number") from None
            qrels.setdefault(parts[0], {})[parts[1]] = rel
            rows += 1
    return qrels, rows


def read_retrieval_set(corpus: str | Path, queries: str | Path, qrels: str | Path) -> RetrievalSet:
    docs = read_records(corpus, ("_id", "text"))
    seen: dict[str, int] = {}
    for n, d in enumerate(docs):
        if d["_id"] in seen:
            raise BeirError(f"{corpus}: document id {d['_id']!r} appears twice "
                             f"(documents {seen[d['_id']] + 1} and {n + 1})")
        seen[d["_id"]] = n
    qs = read_records(queries, ("_id", "text"))
    rel, rows = read_qrels(qrels)
    texts = [(d.get("title", "") + " " + d["text"]).strip() if d.get("title") else d["text"] for d in docs]
    return RetrievalSet([d["_id"] for d in docs], texts, [q["_id"] for q in qs], [q["text"] for q in qs], rel, rows)


def load_beir(folder: str | Path, split: str = "test") -> RetrievalSet:
    """A BEIR folder for scoring: only the queries the split's qrels judge, relevance as integers."""
    folder = Path(folder)
    data = read_retrieval_set(folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels" / f"{split}.tsv")
    keep = [i for i, q in enumerate(data.query_ids) if q in data.qrels]
    data.query_ids = [data.query_ids[i] for i in keep]
    data.query_texts = [data.query_texts[i] for i in keep]
    data.qrels = {q: {d: int(s) for d, s in docs.items()} for q, docs in data.qrels.items()}
    return data
