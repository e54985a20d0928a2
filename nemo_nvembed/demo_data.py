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

Instructions for the three tasks live in the task registry (conf/tasks.yaml), not here.

Usage: ``python -m nemo_nvembed.demo_data --out DIR [--seed 0] [--max-train N ...]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import inspect
import json
import random
import re
import sys
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

RETRIEVAL, CLASSIFICATION, CLUSTERING = "PyDocRetrieval", "PyDocClassification", "PyDocClustering"

# Allowlist: modules whose import has no side effects (no windows, no network, no test packages),
# each mapped to an area that follows the chapters of the Python Library Reference.
MODULE_AREAS = {
    "string": "text processing", "re": "text processing", "difflib": "text processing",
    "textwrap": "text processing", "unicodedata": "text processing",
    "struct": "binary data", "codecs": "binary data", "array": "binary data",
    "datetime": "data types", "calendar": "data types", "collections": "data types",
    "heapq": "data types", "bisect": "data types", "copy": "data types", "pprint": "data types",
    "enum": "data types", "graphlib": "data types", "weakref": "data types", "zoneinfo": "data types",
    "math": "numeric and math", "cmath": "numeric and math", "decimal": "numeric and math",
    "fractions": "numeric and math", "numbers": "numeric and math", "random": "numeric and math",
    "statistics": "numeric and math",
    "itertools": "functional programming", "functools": "functional programming",
    "operator": "functional programming",
    "pathlib": "file and directory access", "os.path": "file and directory access",
    "shutil": "file and directory access", "glob": "file and directory access",
    "fnmatch": "file and directory access", "tempfile": "file and directory access",
    "filecmp": "file and directory access", "fileinput": "file and directory access",
    "pickle": "data persistence", "shelve": "data persistence", "sqlite3": "data persistence",
    "marshal": "data persistence", "dbm": "data persistence",
    "zlib": "data compression and archiving", "gzip": "data compression and archiving",
    "bz2": "data compression and archiving", "lzma": "data compression and archiving",
    "zipfile": "data compression and archiving", "tarfile": "data compression and archiving",
    "csv": "file formats", "configparser": "file formats", "plistlib": "file formats",
    "hashlib": "cryptographic services", "hmac": "cryptographic services",
    "secrets": "cryptographic services",
    "io": "operating system services", "time": "operating system services",
    "argparse": "operating system services", "getopt": "operating system services",
    "logging": "operating system services", "platform": "operating system services",
    "os": "operating system services", "getpass": "operating system services",
    "optparse": "operating system services",
    "threading": "concurrent execution", "subprocess": "concurrent execution",
    "queue": "concurrent execution", "sched": "concurrent execution",
    "concurrent.futures": "concurrent execution", "contextvars": "concurrent execution",
    "socket": "networking and interprocess communication",
    "select": "networking and interprocess communication",
    "selectors": "networking and interprocess communication",
    "signal": "networking and interprocess communication",
    "asyncio": "networking and interprocess communication",
    "ssl": "networking and interprocess communication",
    "mmap": "networking and interprocess communication",
    "json": "internet data handling", "base64": "internet data handling",
    "binascii": "internet data handling", "email.utils": "internet data handling",
    "mimetypes": "internet data handling", "quopri": "internet data handling",
    "email.message": "internet data handling", "email.parser": "internet data handling",
    "email.policy": "internet data handling", "email.charset": "internet data handling",
    "email.headerregistry": "internet data handling",
    "html": "structured markup", "html.parser": "structured markup",
    "xml.etree.ElementTree": "structured markup", "xml.dom.minidom": "structured markup",
    "xml.sax.handler": "structured markup", "xml.sax.saxutils": "structured markup",
    "urllib.parse": "internet protocols", "ipaddress": "internet protocols",
    "uuid": "internet protocols", "http.cookies": "internet protocols",
    "http.client": "internet protocols", "http.server": "internet protocols",
    "http.cookiejar": "internet protocols", "urllib.request": "internet protocols",
    "ftplib": "internet protocols", "smtplib": "internet protocols", "imaplib": "internet protocols",
    "poplib": "internet protocols", "xmlrpc.client": "internet protocols",
    "typing": "development tools", "doctest": "development tools", "unittest": "development tools",
    "pdb": "debugging and profiling", "timeit": "debugging and profiling",
    "cProfile": "debugging and profiling", "pstats": "debugging and profiling",
    "trace": "debugging and profiling", "bdb": "debugging and profiling",
    "dataclasses": "runtime services", "contextlib": "runtime services", "abc": "runtime services",
    "inspect": "runtime services", "traceback": "runtime services", "warnings": "runtime services",
    "types": "runtime services",
    "sys": "runtime services", "gc": "runtime services", "sysconfig": "runtime services",
    "atexit": "runtime services", "code": "runtime services", "codeop": "runtime services",
    "ast": "language services", "dis": "language services", "tokenize": "language services",
    "shlex": "language services", "keyword": "language services", "symtable": "language services",
    "py_compile": "language services", "compileall": "language services",
    "pickletools": "language services",
    "importlib.metadata": "importing modules", "pkgutil": "importing modules",
    "runpy": "importing modules", "zipimport": "importing modules",
    "builtins": "built-in types",
}
# Where a module's public objects report another __module__ than its import name.
EXTRA_OWNERS = {"os.path": ("genericpath",), "os": ("posix",), "random": ("_random",)}
# Hooks that a running program (pytest, logging.captureWarnings) may replace: skipped, so that the
# output does not depend on what else the process has imported.
REPLACEABLE = {"sys": {"breakpointhook", "displayhook", "excepthook", "unraisablehook"},
               "warnings": {"formatwarning", "showwarning"}, "threading": {"excepthook"}}
# pydoc topics joined to clustering under two areas of their own.
TOPIC_TYPE_KEYS = {"dict", "lists", "string-methods", "truth", "specialattrs"}

# Autogenerated slot-wrapper/object docstrings carry no information about the function.
BOILERPLATE = re.compile(
    r"^(return self\s*\S*\s*value|initialize self|create and return a new object|return repr\(self\)"
    r"|return str\(self\)|return hash\(self\)|implement \w+\(|helper for pickle|default object formatter"
    r"|size of object in memory|return getattr\(self|return self\[|set self\[|delete self\[|return len\(self\)"
    r"|return iter\(self\)|return bool\(self\)|return state information for pickling|support for pickle"
    r"|method generated by attrs|abstract classes can override this|see help\(type\(self\)\))",
    re.IGNORECASE,
)
SIGNATURE_LINE = re.compile(r"^[\w.\[\]]+\(.*\)\s*(->.*)?$")
SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)(?<!\betc)(?<!\bvs)[.!?](?=\s+[A-Z(\"'`*])")
TOKEN = re.compile(r"(?u)\b\w\w+\b")


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
    packages: str = ""  # comma-separated installed packages whose docstrings join training (prep/package_docs.py)

    def __post_init__(self):
        if not 0 < self.heldout_frac < 1 or not 0 < self.perc_pos <= 1 or not 0 < self.near_dup_ratio <= 1:
            raise ValueError(f"fractions out of range in {self}")
        if min(self.heldout_queries, self.val_queries, self.max_train, self.num_neg, self.max_chars) < 1:
            raise ValueError(f"sizes must be positive in {self}")


@dataclasses.dataclass(frozen=True)
class DocItem:
    id: str  # module.qualname, or pydoc.<topic>
    module: str
    area: str
    kind: str  # function | method | class | topic
    summary: str
    body: str  # "" when the docstring has a summary only


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


def trim(text: str, max_chars: int) -> str:
    """Cut at a sentence end (or failing that a word end) at or before max_chars."""
    if len(text) <= max_chars:
        return text
    head = text[: max_chars + 1]
    ends = [m.end() for m in SENTENCE_END.finditer(head)]
    if ends and ends[-1] >= max_chars // 2:
        return head[: ends[-1]].strip()
    return head[: head.rfind(" ")].strip() if " " in head else head[:max_chars]


def split_docstring(doc: str) -> tuple[str, str] | None:
    """(summary sentence, rest) of a docstring, whitespace-normalised; None if unusable."""
    lines = inspect.cleandoc(doc).splitlines()
    while lines and (SIGNATURE_LINE.match(lines[0].strip()) or lines[0].strip() in ("", "--")):
        lines.pop(0)  # C functions often start with their signature
    paragraphs = [normalize(p) for p in "\n".join(lines).split("\n\n")]
    paragraphs = [p for p in paragraphs if p]
    if not paragraphs or BOILERPLATE.match(paragraphs[0]):
        return None
    first = paragraphs[0]
    m = SENTENCE_END.search(first)
    summary, rest = (first[: m.end()], first[m.end():].strip()) if m else (first, "")
    return summary, normalize(" ".join([rest, *paragraphs[1:]]))


def _owners(name: str, module) -> tuple[str, ...]:
    last = name.split(".")[-1]
    return (name, module.__name__, "_" + last, "_" + name, *EXTRA_OWNERS.get(name, ()))


def _owned(obj, name: str, owners: tuple[str, ...]) -> bool:
    owner = getattr(obj, "__module__", None) or ""
    return owner in owners or owner.startswith(name + ".")


def _item(id_: str, module: str, kind: str, doc, cfg: DemoDataConfig) -> DocItem | None:
    return _item_in_area(id_, module, MODULE_AREAS[module], kind, doc, cfg)


def _item_in_area(id_: str, module: str, area: str, kind: str, doc, cfg: DemoDataConfig) -> DocItem | None:
    if not isinstance(doc, str) or not doc.strip():
        return None
    parts = split_docstring(doc)
    if parts is None or len(parts[0].split()) < cfg.min_summary_words or len(parts[0]) > 300 \
            or ">>>" in parts[0]:
        return None  # no summary sentence: too short, a whole paragraph, or a doctest
    return DocItem(id_, module, area, kind, parts[0], trim(parts[1], cfg.max_chars))


def _is_routine(obj) -> bool:
    return inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.ismethoddescriptor(obj)


def collect_module(name: str, cfg: DemoDataConfig) -> list[DocItem]:
    """Public functions, classes and class methods that the module itself defines."""
    with warnings.catch_warnings():  # e.g. typing.io warns on attribute access
        warnings.simplefilter("ignore")
        return _collect_module(name, cfg)


def _collect_module(name: str, cfg: DemoDataConfig) -> list[DocItem]:
    module = importlib.import_module(name)
    skip = REPLACEABLE.get(name, set())
    public = {a: getattr(module, a) for a in sorted(vars(module)) if not a.startswith("_") and a not in skip}
    owners = _owners(name, module)
    items = []
    for attr, obj in public.items():
        if inspect.ismethod(obj):  # e.g. random.choice, bound to a module-level instance
            obj = obj.__func__
        if inspect.isclass(obj) and _owned(obj, name, owners):
            items.append(_item(f"{name}.{attr}", name, "class", obj.__doc__, cfg))
            for meth in sorted(vars(obj)):
                raw = vars(obj)[meth]
                raw = getattr(raw, "__func__", raw)  # staticmethod / classmethod
                # C methods have no __module__; Python ones must come from this module (not a patch).
                if not meth.startswith("_") and _is_routine(raw) and (
                        getattr(raw, "__module__", None) is None or _owned(raw, name, owners)):
                    items.append(_item(f"{name}.{attr}.{meth}", name, "method", raw.__doc__, cfg))
        elif _is_routine(obj) and _owned(obj, name, owners):
            items.append(_item(f"{name}.{attr}", name, "function", obj.__doc__, cfg))
    return [i for i in items if i is not None]


def collect_topics(cfg: DemoDataConfig) -> list[DocItem]:
    """Language-reference topics (pydoc_data.topics) as clustering-only items."""
    from pydoc_data.topics import topics

    items = []
    for key in sorted(topics):
        lines = topics[key].strip().splitlines()
        if len(lines) < 3 or not set(lines[1].strip()) <= set("*=-"):
            continue
        area = "built-in types" if key.startswith(("bltin-", "types")) or key in TOPIC_TYPE_KEYS else "language reference"
        body = normalize(" ".join(lines[2:]))
        m = SENTENCE_END.search(body)
        summary = normalize(lines[0]) + ": " + trim(body[: m.end()] if m else body, 300)
        items.append(DocItem(f"pydoc.{key}", "pydoc_data.topics", area, "topic", summary, ""))
    return items


def dedupe(items: list[DocItem]) -> tuple[list[DocItem], int]:
    """Keep the first item (by id) of each summary and of each body; a duplicate is dropped whole."""
    seen, kept = set(), []
    for item in sorted(items, key=lambda i: i.id):
        keys = {("s", text_key(item.summary))} | ({("b", text_key(item.body))} if item.body else set())
        if keys & seen:
            continue
        seen |= keys
        kept.append(item)
    return kept, len(items) - len(kept)


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
    """Ids of training items whose summary or body BM25 finds too close to a held-out text.

    Section 4.2 removes training content similar to evaluation content with a BM25 threshold.
    Raw BM25 scores are not comparable across queries, so each score is divided by the query's
    score against itself (all texts share one index), and the test is symmetric: a pair is a near
    duplicate when both texts reach near_dup_ratio of their self score on the other. One-way
    ratios flag short summaries that share a single word ("Return x * (2**i)." vs "Return a
    compressor object.")."""
    texts = [t for i in candidates for t in (i.summary, i.body) if t]
    owner = [i.id for i in candidates for t in (i.summary, i.body) if t]
    index = Bm25(heldout_texts + texts)
    n_held = len(heldout_texts)
    held_scores = np.stack([index.scores(h) for h in heldout_texts])  # [n_held, n_held + n_texts]
    held_self = np.maximum(np.diagonal(held_scores), 1e-9)  # [n_held]
    back = held_scores[:, n_held:] / held_self[:, None]  # [n_held, n_texts]: held text as query
    removed = set()
    for k, (t, item_id) in enumerate(zip(texts, owner)):
        scores = index.scores(t)  # [n_held + n_texts]
        own = float(scores[n_held + k])
        if own > 0 and np.minimum(scores[:n_held] / own, back[:, k]).max() >= cfg.near_dup_ratio:
            removed.add(item_id)
    return removed


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
    from nemo_nvembed.prep.package_docs import PACKAGE_MODULES, collect_packages

    wanted = {p.strip() for p in cfg.packages.split(",") if p.strip()}
    names = [m for m in PACKAGE_MODULES if m.split(".")[0] in wanted]
    missing = wanted - {m.split(".")[0] for m in names}
    if missing:
        raise ValueError(f"--packages: no allowlisted modules for {sorted(missing)} "
                         f"(see PACKAGE_MODULES in nemo_nvembed/prep/package_docs.py)")
    return collect_packages(names, cfg)


def build(cfg: DemoDataConfig) -> dict:
    """Everything in memory: examples per task, BEIR splits, and the manifest."""
    rng = random.Random(cfg.seed)
    modules, skipped, raw = [], {}, []
    for name in sorted(MODULE_AREAS):
        try:
            items = collect_module(name, cfg)
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

    topics = collect_topics(cfg)
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
    negs, mining = mine_negatives([corpus_items[k].summary for k in chosen], chosen, corpus, ids, cfg, rng)
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
                      "bm25_mining": dict(sorted(mining.items()))},
        "counts": {
            "stage1": {RETRIEVAL: len(retrieval)},
            "stage2": dict(sorted(Counter(e["task"] for e in stage2).items())),
            "heldout": {"queries": len(heldout["queries"]), "corpus": len(heldout["corpus"])},
            "val": {"queries": len(val["queries"]), "corpus": len(val["corpus"])},
            "classification_per_label": per_label, "clustering_per_area": per_area,
        },
    }
    return {"stage1": retrieval, "stage2": stage2, "heldout": heldout, "val": val, "manifest": manifest}


def check_no_overlap(data: dict) -> int:
    """Raise if a normalised query or passage is shared by training, val and held-out files.

    Returns the number of distinct texts checked. Raises rather than asserts: it must hold
    under ``python -O`` too."""
    train = {text_key(t) for name in ("stage1", "stage2") for e in data[name]
             for t in (e["query"], e["pos"], *e["neg"])}
    val = {text_key(r["text"]) for split in ("corpus", "queries") for r in data["val"][split]}
    held = {text_key(r["text"]) for split in ("corpus", "queries") for r in data["heldout"][split]}
    for name, a, b in (("train/held-out", train, held), ("val/held-out", val, held), ("train/val", train, val)):
        if a & b:
            raise RuntimeError(f"{name} overlap in {len(a & b)} texts, e.g. {sorted(a & b)[:3]}")
    return len(train) + len(val) + len(held)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n")


def _write_beir(root: Path, split: dict) -> None:
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    _write_jsonl(root / "corpus.jsonl", split["corpus"])
    _write_jsonl(root / "queries.jsonl", split["queries"])
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in split["qrels"]]
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write(out: Path, data: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / "stage1.jsonl", data["stage1"])
    _write_jsonl(out / "stage2.jsonl", data["stage2"])
    _write_beir(out / "heldout", data["heldout"])
    _write_beir(out / "val", data["val"])
    (out / "manifest.json").write_text(json.dumps(data["manifest"], indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    for field in dataclasses.fields(DemoDataConfig):
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default)
    args = parser.parse_args(argv)
    cfg = DemoDataConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DemoDataConfig)})
    start = time.perf_counter()
    data = build(cfg)
    n_texts = check_no_overlap(data)
    write(args.out, data)
    m = data["manifest"]
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f}s (Python {m['python_version']}, seed {cfg.seed})")
    print(f"modules: {len(m['modules']['train'])} train-side, {len(m['modules']['heldout'])} held out "
          f"({', '.join(m['modules']['heldout'])}), skipped {sorted(m['modules']['skipped']) or 'none'}")
    print(f"filtering: {json.dumps(m['filtering'])}")
    for split, counts in m["counts"].items():
        print(f"  {split}: {json.dumps(counts)}")
    print(f"overlap check: OK, 0 shared texts among {n_texts} distinct train/val/held-out texts")
    return m


if __name__ == "__main__":
    main()
