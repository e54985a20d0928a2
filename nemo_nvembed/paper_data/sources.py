"""Reading a manifest set's source table with `datasets`, from the Hub or from local copies.

Hub: ``load_dataset(hf_id, config, split=split, revision=revision)``. Local (``--source-dir DIR``):
the files of ``DIR/<hf_id>[/<config>]`` whose name starts with the split (``train.jsonl``,
``train-00000-of-00001.parquet``, ``train_0.jsonl.gz``, also under ``data/``) go through the same
``load_dataset`` call with the matching packaged builder (json, parquet or csv) and
``data_files={split: files}``; so a local copy is read exactly as the Hub copy, column types included.

A raw-file source (``data_files``: a path inside the repository, e.g. STS22's ``en/train.jsonl``,
which the repository's own configs do not expose) is read with the packaged builder of its
extension: ``hf://datasets/<hf_id>[@revision]/<path>`` from the Hub, ``DIR/<hf_id>/<path>`` locally.
No loading script is ever run (`datasets` 4+ refuses them). Tests write fixtures in each source's
schema and read them this way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Optional

from nemo_nvembed.checks.errors import UserError

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "csv"}


def _suffix(p: Path | str) -> str:
    """The format suffix of a file name, a compression suffix looked through (train_0.jsonl.gz -> .jsonl)."""
    name = Path(p).name
    for c in (".gz", ".bz2", ".xz", ".zst"):
        if name.endswith(c):
            name = name[: -len(c)]
    return Path(name).suffix


def _stem(p: Path) -> str:
    return p.name[: p.name.index(_suffix(p))] if _suffix(p) else p.stem


class SourceError(UserError):
    """A source that cannot be read; the message names the dataset, split and column."""


def local_files(source_dir: str | Path, hf_id: str, config: Optional[str], split: str) -> tuple[str, list[str]]:
    """(builder, files) of a local copy; SourceError naming what was looked for when there is none."""
    folder = Path(source_dir) / hf_id / (config or "")
    if not folder.is_dir():
        raise SourceError(f"{hf_id} ({config or 'no config'}): no local copy at {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and _suffix(p) in BUILDERS
                   and (_stem(p) == split or any(_stem(p).startswith(split + c) for c in "-_")))
    if not files:
        raise SourceError(f"{hf_id} ({config or 'no config'}): no file for split {split!r} in {folder} "
                          f"(expected {split}.jsonl, {split}.parquet, {split}-*.parquet, ...)")
    kinds = {BUILDERS[_suffix(p)] for p in files}
    if len(kinds) > 1:
        raise SourceError(f"{folder}: split {split!r} mixes file formats ({', '.join(sorted(kinds))})")
    return kinds.pop(), [str(p) for p in files]


def load_table(hf_id: str, config: Optional[str], split: str, source_dir: str | Path | None = None,
               data_files: Optional[str] = None, revision: Optional[str] = None):
    """A `datasets.Dataset` for one split of one source (rules in the module docstring)."""
    import datasets  # heavy (pyarrow, fsspec, hub client): only when a set is read

    if data_files is not None:
        builder = BUILDERS.get(_suffix(data_files))
        if builder is None:
            raise SourceError(f"{hf_id}: data_files {data_files!r}: unknown format (one of {', '.join(BUILDERS)})")
        if source_dir is None:
            url = f"hf://datasets/{hf_id}" + (f"@{revision}" if revision else "") + f"/{data_files}"
        else:
            url = str(Path(source_dir) / hf_id / data_files)
            if not Path(url).is_file():
                raise SourceError(f"{hf_id} (data_files {data_files}): no local copy at {url}")
        kw = {"data_files": {split: [url]}}
    elif source_dir is None:
        builder, kw = hf_id, {"name": config, "revision": revision}
    else:
        builder, files = local_files(source_dir, hf_id, config, split)
        kw = {"data_files": {split: files}, **({"delimiter": "\t"} if files[0].endswith(".tsv") else {})}
    try:
        return datasets.load_dataset(builder, split=split, **kw)
    except Exception as e:  # network, unknown id/config/split, an unreadable local file: one line naming the set
        what = f"data_files {data_files}" if data_files else (config or "no config")
        raise SourceError(f"{hf_id} ({what}), split {split!r}: {type(e).__name__}: {e}") from None


def column_values(table, name: str, spec: Any, hf_id: str) -> Iterator:
    """Values of one role: a column, or a list of text columns joined with a space (P2P texts)."""
    cols = [spec] if isinstance(spec, str) else list(spec)
    for c in cols:
        if c not in table.column_names:
            raise SourceError(f"{hf_id}: fields.{name}: no column {c!r} (columns: {', '.join(table.column_names)})")
    if len(cols) == 1:
        yield from table[cols[0]]
        return
    for parts in zip(*(table[c] for c in cols)):
        yield " ".join(str(p).strip() for p in parts if p is not None and str(p).strip())
