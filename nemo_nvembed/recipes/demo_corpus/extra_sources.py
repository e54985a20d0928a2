"""General-domain training sources of the demo data, from Debian (``--sources foldoc,jargon,wordnet,perldoc,debdesc``).

Each source gives retrieval pairs shaped like ``PyDocRetrieval`` (a short query that summarises, a
longer positive) under its own task (instructions in conf/tasks.yaml):

* ``foldoc``: the Free On-line Dictionary of Computing (``dict-foldoc``), and ``jargon``: the Jargon
  File (``dict-jargon``); task ``GlossaryRetrieval``, pairs by :mod:`.dictd`. With both, a FOLDOC entry
  whose headword the Jargon File also defines is dropped (FOLDOC copies many Jargon File entries:
  two near-identical pairs would be each other's false negatives in a batch).
* ``wordnet``: WordNet 3.0 synsets (``wordnet-base``); task ``WordNetRetrieval``, pairs by :mod:`.wordnet`.
* ``perldoc``: Perl's core-module documentation (``perl-modules-5.36``); task ``PerlDocRetrieval``,
  pairs by :mod:`.perldoc` (NAME's description -> DESCRIPTION's start).
* ``debdesc``: Debian's package descriptions (the archive's ``Translation-en``, not a package); task
  ``DebianPackageRetrieval``, pairs by :mod:`.debdesc` (synopsis -> extended description).

A source named ``name:N`` samples N pairs instead of ``max_per_source`` (``--sources foldoc,debdesc:2000``).

Per source, in a fixed order whatever order ``--sources`` names them: all usable pairs; a seeded
sample of ``max_per_source`` (or the source's own N); minus those with a query or positive that is a near-duplicate of a
text of either held-out split (Python docs, man pages; :mod:`nemo_nvembed.data.neardup`); hard
negatives mined among the rest of that source's sample by the demo's miner (BM25 by default). The
packages are read from ``/`` when installed, else fetched once into a cache (:mod:`.debian`; ``debdesc``:
:func:`.debdesc.fetch`).
Every count (parsed, skipped by reason, sampled, removed as near-duplicates, kept) goes to the manifest.
"""
from __future__ import annotations

import dataclasses
import random
from collections import Counter
from pathlib import Path
from typing import Callable

from nemo_nvembed.checks.errors import UserError
from nemo_nvembed.data.neardup import near_duplicates
from nemo_nvembed.recipes.demo_corpus import debdesc, debian, dictd, perldoc, wordnet
from nemo_nvembed.recipes.demo_corpus.docstrings import DocItem

GLOSSARY, WORDNET, PERLDOC, DEBDESC = "GlossaryRetrieval", "WordNetRetrieval", "PerlDocRetrieval", "DebianPackageRetrieval"


@dataclasses.dataclass(frozen=True)
class Source:
    task: str
    package: str
    licence: str
    folder: str  # where the package installs its files, under / or the cache ("" for debdesc: one file)
    probe: str  # a file of the package, relative to folder

    def locate(self, name: str) -> tuple[Path, dict]:
        """(what :meth:`read` reads: the package's folder, or debdesc's checked file; its provenance for the manifest)."""
        if self.task == DEBDESC:  # an archive index, not a package: fetched and hash-checked by debdesc
            path, fetched = debdesc.fetch(debian.CACHE / "debdesc")
            return path, {"version": fetched["release"], "files": str(path),
                          **{k: fetched[k] for k in ("url", "sha256", "date")}}
        root = debian.package_root((self.package,), f"{self.folder}/{self.probe}", debian.CACHE / self.package,
                                   f"--sources {name}")
        return root / self.folder, {"version": debian.package_version(self.package, root),
                                    "files": str(root / self.folder)}

    def read(self, name: str, folder: Path, cfg) -> tuple[list[DocItem], Counter]:
        if self.task == WORDNET:
            return wordnet.read_pairs(folder, self.task, cfg.min_summary_words, cfg.max_chars)
        if self.task == PERLDOC:
            return perldoc.read_pairs(folder, self.task, cfg.min_summary_words, cfg.min_body_words, cfg.max_chars)
        if self.task == DEBDESC:
            return debdesc.read_pairs(folder, self.task, cfg.min_summary_words, cfg.min_body_words, cfg.max_chars)
        return dictd.read_pairs(folder, name, self.task, cfg.min_summary_words, cfg.min_body_words, cfg.max_chars)


SOURCES = {
    "foldoc": Source(GLOSSARY, "dict-foldoc", "GFDL 1.1 or later (FOLDOC, ed. Denis Howe; the package's 8 Debian-added "
                     "entries, under another licence, give no pair: too short, or a licence notice)",
                     "usr/share/dictd", "foldoc.index"),
    "jargon": Source(GLOSSARY, "dict-jargon", "public domain (The Jargon File 4.4.7)", "usr/share/dictd", "jargon.index"),
    "wordnet": Source(WORDNET, "wordnet-base", "WordNet 3.0 licence (permissive, BSD-like; Princeton University)",
                      "usr/share/wordnet", "data.noun"),
    "perldoc": Source(PERLDOC, "perl-modules-5.36", "Perl's: the GNU GPL (1 or later) or the Artistic License, "
                      "as each module's COPYRIGHT says (/usr/share/doc/perl/copyright)",
                      "usr/share/perl/5.36.0", "Benchmark.pm"),
    "debdesc": Source(DEBDESC, "Translation-en (Debian's archive index)",
                      "each package's own: a description is part of its package (debian/control), "
                      "distributed under the package's licence (the DFSG-free ones of Debian's main archive)",
                      "", ""),
}


def source_caps(text: str) -> dict[str, int | None]:
    """{source: its own sample size, or None for ``max_per_source``} of a comma-separated ``--sources``
    value (``name`` or ``name:N``), in :data:`SOURCES` order."""
    wanted = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, _, cap = (p.strip() for p in entry.partition(":"))
        if cap and not (cap.isdigit() and int(cap) > 0):
            raise UserError(f"--sources {entry}: the sample size after ':' must be a positive whole number")
        wanted[name] = int(cap) if cap else None
    unknown = sorted(set(wanted) - set(SOURCES))
    if unknown:
        raise UserError(f"--sources: unknown {unknown}; known: {', '.join(SOURCES)}")
    return {s: wanted[s] for s in SOURCES if s in wanted}


def source_names(text: str) -> list[str]:
    """The sources a comma-separated ``--sources`` value names, in :data:`SOURCES` order."""
    return list(source_caps(text))


def _load(name: str, cfg) -> tuple[list[DocItem], dict]:
    src = SOURCES[name]
    where, provenance = src.locate(name)
    items, skipped = src.read(name, where, cfg)
    info = {"task": src.task, "package": src.package, "version": provenance.pop("version"), "licence": src.licence,
            **provenance, "parsed": len(items) + sum(skipped.values()),
            "skipped": dict(sorted(skipped.items())), "usable": len(items)}
    return items, info


def build_sources(cfg, heldout_texts: list[str], manpage_texts: list[str],
                  miner: Callable) -> tuple[list[dict], dict[str, dict]]:
    """(retrieval examples of every source in ``cfg.sources``, {source: manifest entry})."""
    caps = source_caps(cfg.sources)
    loaded = {name: _load(name, cfg) for name in caps}
    if "foldoc" in loaded and "jargon" in loaded:
        jargon_terms = {i.id.split(":", 1)[1].lower() for i in loaded["jargon"][0]}
        items, info = loaded["foldoc"]
        kept = [i for i in items if i.id.split(":", 1)[1].lower() not in jargon_terms]
        info["same_headword_as_jargon_removed"] = len(items) - len(kept)
        loaded["foldoc"] = kept, info
    examples, manifest = [], {}
    for name, (items, info) in loaded.items():
        rng = random.Random(f"{cfg.seed}:{name}")
        cap = caps[name] or cfg.max_per_source
        pool = sorted(rng.sample(items, min(cap, len(items))), key=lambda i: i.id)
        texts = [t for i in pool for t in (i.summary, i.body)]
        near = {}  # {item id: whether a Python-docs held-out text (else only a man page) is near it}
        for k, (h, _) in sorted(near_duplicates(texts, heldout_texts + manpage_texts, cfg.near_dup_ratio).items()):
            near[pool[k // 2].id] = near.get(pool[k // 2].id, False) or h < len(heldout_texts)
        pool = [i for i in pool if i.id not in near]
        if len(pool) < cfg.num_neg + 2:
            raise UserError(f"--sources {name}: {len(pool)} pairs left after sampling and filtering, too few "
                            f"for {cfg.num_neg} negatives each (raise --max-per-source or {name}:N)")
        corpus, ids = [i.body for i in pool], [i.id for i in pool]
        negs, mining = miner([i.summary for i in pool], list(range(len(pool))), corpus, ids, cfg,
                             random.Random(f"{cfg.seed}:{name}:negatives"))
        examples += [{"task": SOURCES[name].task, "query": i.summary, "pos": corpus[k],
                      "neg": [corpus[j] for j in n], "pos_id": ids[k], "neg_ids": [ids[j] for j in n]}
                     for k, (i, n) in enumerate(zip(pool, negs))]
        info.update(sampled=len(pool) + len(near),
                    near_duplicates_removed={"heldout": sum(near.values()),
                                             "heldout_manpages": len(near) - sum(near.values())},
                    examples=len(pool))
        info[f"{cfg.negatives}_mining"] = dict(sorted((str(k), v) for k, v in mining.items()))
        manifest[name] = info
    return examples, manifest
