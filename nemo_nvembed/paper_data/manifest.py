"""Recipe manifest (conf/data/nvembed_v1.yaml): which public datasets make each training stage.

Merged onto a structured schema in struct mode, so a misspelled key or a wrong type fails naming
the file and the key; required keys are `???`. Cross-field rules (fields per kind, task known to
the registry with the same kind, unique names) are checked in `load_manifest`, before any data
is read. The file's header documents every key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from nemo_nvembed.checks.errors import UserError
from nemo_nvembed.checks.schema import load_yaml, merge_onto_schema
from nemo_nvembed.data.tasks import TaskRegistry

FIELDS = {"retrieval": ("query", "pos"), "classification": ("text", "label"),
          "clustering": ("text", "label"), "sts": ("text1", "text2", "score")}


class ManifestError(UserError):
    """Invalid manifest; the message names the file and the key."""


@dataclass
class TableRef:
    config: Optional[str] = MISSING
    split: str = MISSING


@dataclass
class BeirSpec:
    corpus: TableRef = field(default_factory=TableRef)
    queries: TableRef = field(default_factory=TableRef)


@dataclass
class DedupSpec:
    config: Optional[str] = MISSING
    split: str = MISSING
    fields: List[str] = MISSING  # a column of strings, or of lists of strings (MTEB clustering sets)
    threshold: float = MISSING
    hf_id: Optional[str] = None  # the evaluation set's own repository (default: the set's hf_id)
    revision: Optional[str] = None  # the revision MTEB evaluates on (default: the Hub's main)
    data_files: Optional[str] = None  # a raw file of that repository, read as `split` (config: null)


@dataclass
class SetSpec:
    name: str = MISSING
    task: str = MISSING
    kind: str = MISSING
    hf_id: str = MISSING
    config: Optional[str] = MISSING
    split: str = MISSING
    fields: Dict[str, Any] = MISSING  # role -> column, or a list of columns joined with a space
    samples: int = MISSING
    dedup: Optional[List[DedupSpec]] = MISSING  # filters run in order; one mapping = a list of one
    checked: str = MISSING  # where the id, config, split and columns were checked (and what was not)
    # optional keys (absent from most entries; documented in the manifest's header)
    beir: Optional[BeirSpec] = None
    data_files: Optional[str] = None  # a raw file of the repository, read as `split` (no config)
    revision: Optional[str] = None
    score_range: Optional[List[float]] = None  # sts: [lowest, highest = most similar] of the source
    label_texts: Dict[str, str] = field(default_factory=dict)
    label_sep: Optional[str] = None
    min_score: Optional[float] = None
    max_neg_relevance: Optional[float] = None
    enabled: bool = True
    note: str = ""


@dataclass
class MiningSpec:
    top_k: int = MISSING
    perc_pos: float = MISSING
    pool_rows: int = MISSING  # pair tables: rows whose positives form the mining corpus


@dataclass
class Manifest:
    num_negatives: int = MISSING
    seed: int = MISSING
    mining: MiningSpec = field(default_factory=MiningSpec)
    stage1: List[Any] = MISSING  # each entry validated against SetSpec in load_manifest (errors name it)
    stage2: List[Any] = MISSING


def load_manifest(path: str | Path, registry: TaskRegistry):
    """Validated manifest (a DictConfig shaped like `Manifest`)."""
    path = Path(path)
    raw = load_yaml(path, "manifest", ManifestError)
    m = merge_onto_schema(Manifest, raw, str(path), ManifestError)
    if m.num_negatives < 1 or m.mining.top_k < 1 or not 0 < m.mining.perc_pos <= 1 or m.mining.pool_rows < 1:
        raise ManifestError(f"{path}: need num_negatives >= 1, mining.top_k >= 1, 0 < mining.perc_pos <= 1, "
                            "mining.pool_rows >= 1")
    for stage in ("stage1", "stage2"):
        names, sets = set(), []
        for i, raw_set in enumerate(m[stage]):
            name = raw_set.get("name", "?") if hasattr(raw_set, "get") else "?"
            where = f"{path}: {stage}[{i}] ({name})"
            if hasattr(raw_set, "get") and hasattr(raw_set.get("dedup"), "keys"):
                raw_set["dedup"] = [raw_set["dedup"]]  # one evaluation split: a list of one filter
            s = merge_onto_schema(SetSpec, raw_set, where, ManifestError, key_sep=".")
            sets.append(s)
            if s.name in names:
                raise ManifestError(f"{where}: name {s.name!r} used twice in {stage}")
            names.add(s.name)
            _check_set(s, where, registry)
        m[stage] = sets
    return m


def _check_set(s, where: str, registry: TaskRegistry) -> None:
    if s.kind not in FIELDS:
        raise ManifestError(f"{where}.kind: {s.kind!r} is not one of {', '.join(FIELDS)}")
    if s.task not in registry:
        hits = registry.suggest(s.task)
        raise ManifestError(f"{where}.task: {s.task!r} is not in {registry.source}"
                            + (f"; did you mean {', '.join(hits)}?" if hits else ""))
    if registry[s.task].kind != s.kind:
        raise ManifestError(f"{where}.task: {s.task} is of kind {registry[s.task].kind!r} in {registry.source}, "
                            f"the set says {s.kind!r}")
    want = set(FIELDS[s.kind])
    if set(s.fields) != want:
        raise ManifestError(f"{where}.fields: a {s.kind} set maps exactly {', '.join(sorted(want))}; "
                            f"got {', '.join(sorted(s.fields))}")
    if s.samples < 1:
        raise ManifestError(f"{where}.samples: must be >= 1, got {s.samples}")
    if s.beir is not None and s.kind != "retrieval":
        raise ManifestError(f"{where}.beir: only retrieval sets have a BEIR layout")
    if (s.label_texts or s.label_sep) and s.kind not in ("classification", "clustering"):
        raise ManifestError(f"{where}: label_texts/label_sep are for classification/clustering sets")
    if s.kind == "sts" and (s.min_score is None or s.max_neg_relevance is None or s.score_range is None):
        raise ManifestError(f"{where}: an sts set needs min_score, max_neg_relevance and score_range")
    if s.score_range is not None and (s.kind != "sts" or len(s.score_range) != 2
                                      or not s.score_range[0] < s.score_range[1]):
        raise ManifestError(f"{where}.score_range: an sts set's [lowest, highest] score, lowest < highest; "
                            f"got {list(s.score_range)}")
    if s.data_files is not None and (s.config is not None or s.beir is not None):
        raise ManifestError(f"{where}.data_files: a raw file has no config and no BEIR layout (config: null)")
    if not s.checked.strip():
        raise ManifestError(f"{where}.checked: name where the id, config, split and columns were checked")
    for i, d in enumerate(s.dedup or []):
        if not 0 < d.threshold <= 1:
            raise ManifestError(f"{where}.dedup[{i}].threshold: must be in (0, 1], got {d.threshold}")
