"""Training data: JSONL loader and validator.

One example per line::

    {"task": "NQ", "query": "...", "pos": "...", "neg": ["...", ...]}
    {"task": "NQ", "query": "...", "pos": "...", "neg": [...], "pos_id": "d1", "neg_ids": ["d7", ...]}

`task` must be in the task registry (conf/tasks.yaml). Queries are given WITHOUT the instruction
prefix; the model adds "Instruct: ...\\nQuery: " from the registry. `pos_id`/`neg_ids` are
optional document ids: given together or not at all, and for every line of a file or for none
(they become the false-negative masking keys of the loss, which must not mix ids and texts).

Nothing is dropped silently. A bad line raises `DataError` naming file, line and field; with
`on_error="collect"` all bad lines are gathered into one `DataError` (there is no skip mode).
Blank lines are skipped and counted in the summary. Examples with more hard negatives than
`num_negatives` keep the first `num_negatives` (counted). NV-Embed uses 7 hard negatives per
query (Table 5); fewer is handled so that every batch keeps one shape [b, 1 + k]:

* classification and clustering tasks (kind in the registry): the negatives are the OTHER LABELS
  (section 4.2), so a set with m + 1 < k + 1 labels (AmazonCounterfactual, IMDB, Toxic..., m = 1
  or 2) can only have m. Such examples are padded by repeating their negatives in order (counted
  as padded). The loss masks every negative that repeats an earlier one of the same query
  (nemo_nvembed/training/loss.py), so the example is trained on exactly its m distinct
  negatives: a softmax over [pos, m labels], never a label counted several times;
* other kinds: fewer is an error (it usually means a mining or conversion problem) unless
  `allow_negative_resampling`, which fills the gap by drawing with replacement from the
  example's own negatives, deterministically from (seed, line number) (counted). The repeats
  are masked by the loss in the same way.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

from nemo_nvembed.checks.errors import UserError
from nemo_nvembed.checks.schema import close_matches
from nemo_nvembed.data.jsonl_io import iter_lines
from nemo_nvembed.data.tasks import TaskRegistry

REQUIRED_FIELDS = ("task", "query", "pos", "neg")
OPTIONAL_FIELDS = ("pos_id", "neg_ids")
ALL_FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS
TEXT_FIELDS = ("query", "pos", "neg")
MAX_LISTED_ERRORS = 20


class DataError(UserError):
    """Invalid training data. `errors` holds one entry per bad line in collect mode."""

    def __init__(self, message: str, errors: Optional[List["DataError"]] = None, summary=None):
        super().__init__(message)
        self.errors = errors or []
        self.summary = summary


def _line_error(path: Path, line: int, field_name: Optional[str], message: str) -> DataError:
    where = f"{path}:{line}" + (f": field '{field_name}'" if field_name else "")
    return DataError(f"{where}: {message}")


@dataclass(frozen=True)
class Example:
    """One training example. `pos_id`/`neg_ids` are None when the file carries no ids."""

    task: str
    query: str  # without the instruction prefix
    pos: str
    neg: Tuple[str, ...]  # exactly num_negatives (after truncation/resampling)
    pos_id: Optional[str] = None
    neg_ids: Optional[Tuple[str, ...]] = None  # same length as neg
    line: Optional[int] = None  # 1-based line in the source file, for messages

    @property
    def pos_key(self) -> str:
        """False-negative masking key for the loss: the id when given, else the text."""
        return self.pos_id if self.pos_id is not None else self.pos

    @property
    def neg_keys(self) -> Tuple[str, ...]:
        return self.neg_ids if self.neg_ids is not None else self.neg


@dataclass
class LoadSummary:
    path: str
    num_negatives: int
    lines_read: int = 0
    blank_lines: int = 0
    examples_accepted: int = 0
    refused: int = 0
    examples_per_task: Dict[str, int] = field(default_factory=dict)
    examples_truncated_negatives: int = 0  # examples that had more than num_negatives
    negatives_dropped: int = 0
    examples_resampled: int = 0  # examples that had fewer than num_negatives
    negatives_resampled: int = 0  # draws with replacement
    examples_padded: int = 0  # label-set examples (classification/clustering) with fewer negatives
    negatives_padded: int = 0  # repeated slots, masked by the loss
    max_length: Optional[int] = None
    over_max_length: Dict[str, int] = field(default_factory=lambda: {f: 0 for f in TEXT_FIELDS})
    duplicates: int = 0  # examples identical to an earlier line (all fields)
    duplicates_policy: str = "error"  # what happened to them: error (refused) | drop

    def format(self) -> str:
        rows = [
            f"data summary for {self.path}",
            f"  lines read                 {self.lines_read} ({self.blank_lines} blank, skipped)",
            f"  examples accepted          {self.examples_accepted}",
            f"  lines refused              {self.refused}",
            f"  negatives kept per example {self.num_negatives}",
            f"  truncated negatives        {self.examples_truncated_negatives} examples, "
            f"{self.negatives_dropped} negatives dropped",
            f"  resampled negatives        {self.examples_resampled} examples, "
            f"{self.negatives_resampled} draws with replacement",
            f"  padded label negatives     {self.examples_padded} examples, "
            f"{self.negatives_padded} repeated slots (masked by the loss)",
            f"  duplicate examples         {self.duplicates}"
            + (" (dropped)" if self.duplicates_policy == "drop" else " (refused)" if self.duplicates else ""),
        ]
        if self.max_length is not None:
            over = ", ".join(f"{k} {v}" for k, v in self.over_max_length.items())
            rows.append(f"  texts over {self.max_length} tokens   {over} (truncated by the tokenizer)")
        rows.append("  examples per task")
        rows += [f"    {t:<40} {n}" for t, n in sorted(self.examples_per_task.items())]
        return "\n".join(rows)


@dataclass
class LoadResult:
    examples: List[Example]
    summary: LoadSummary


def _reject_duplicate_keys(pairs):
    seen = {}
    for k, v in pairs:
        if k in seen:
            raise ValueError(f"duplicate key {k!r} in JSON object")
        seen[k] = v
    return seen


def _check_text(path, line, name, value) -> str:
    if not isinstance(value, str):
        raise _line_error(path, line, name, f"expected a string, got {_json_type(value)}")
    if not value.strip():
        raise _line_error(path, line, name, "empty or whitespace-only text")
    return value


def _check_str_list(path, line, name, value) -> List[str]:
    if not isinstance(value, list):
        raise _line_error(path, line, name, f"expected a list of strings, got {_json_type(value)}")
    return [_check_text(path, line, f"{name}[{i}]", v) for i, v in enumerate(value)]


def _json_type(value) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null",
            int: "number", float: "number"}.get(type(value), type(value).__name__)


def _resample_rng(seed: int, line: int) -> random.Random:
    digest = hashlib.blake2b(f"{seed}:{line}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def load_examples(
    path: Union[str, Path],
    registry: TaskRegistry,
    num_negatives: int,
    allow_negative_resampling: bool = False,
    seed: int = 0,
    count_tokens: Optional[Callable[[str], int]] = None,
    max_length: Optional[int] = None,
    on_error: str = "raise",
    duplicates: str = "error",
) -> LoadResult:
    """Read and validate a training JSONL file (format in the module docstring).

    count_tokens/max_length (both or neither): count, per field, the texts longer than
    max_length tokens. `count_tokens` receives the raw text (the query without its instruction
    prefix); those texts are truncated later by the tokenizer, this only reports them.
    Negatives are counted after truncation to num_negatives and before resampling.
    on_error: "raise" (stop at the first bad line) or "collect" (one DataError listing all).
    duplicates: an example identical to an earlier line (every field) is a bad line ("error", naming
    both lines) or is dropped ("drop"); counted in the summary either way.
    """
    path = Path(path)
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
    if (count_tokens is None) != (max_length is None):
        raise ValueError("give count_tokens and max_length together, or neither")
    if on_error not in ("raise", "collect"):
        raise ValueError(f"on_error must be 'raise' or 'collect', got {on_error!r}")
    if duplicates not in ("error", "drop"):
        raise ValueError(f"duplicates must be 'error' or 'drop', got {duplicates!r}")
    if not path.is_file():
        raise DataError(f"{path}: training data file not found")
    first_line: Dict[bytes, int] = {}  # digest of an example's fields -> the line it first appeared on

    summary = LoadSummary(path=str(path), num_negatives=num_negatives, max_length=max_length,
                          duplicates_policy=duplicates)
    examples: List[Example] = []
    errors: List[DataError] = []
    has_ids: Optional[Tuple[bool, int]] = None  # (file uses ids, line that decided it)
    for line, offset, raw in iter_lines(path):
        summary.lines_read += 1
        try:
            if line == 1 and raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark
                raw, offset = raw[3:], offset + 3
            try:
                text = raw.decode("utf-8", errors="strict")
            except UnicodeDecodeError as e:
                raise _line_error(
                    path, line, None,
                    f"invalid UTF-8 at byte {e.start} of the line (file offset {offset + e.start}): "
                    f"{raw[e.start:e.start + 4]!r}",
                ) from None
            if not text.strip():
                summary.blank_lines += 1
                continue
            ex, truncated, draws, padded, uses_ids = _parse_line(
                path, line, text, registry, num_negatives, allow_negative_resampling, seed
            )
            if has_ids is None:
                has_ids = (uses_ids, line)
            elif uses_ids != has_ids[0]:
                which = "has" if has_ids[0] else "has no"
                raise _line_error(
                    path, line, "pos_id",
                    f"ids must be given on every line or on none: line {has_ids[1]} {which} "
                    "pos_id/neg_ids but this line differs",
                )
            key = hashlib.blake2b(json.dumps([ex.task, ex.query, ex.pos, ex.neg, ex.pos_id, ex.neg_ids]).encode(),
                                  digest_size=16).digest()
            if key in first_line:
                summary.duplicates += 1
                if duplicates == "drop":
                    continue
                raise _line_error(path, line, None, f"duplicate of line {first_line[key]} (every field identical; "
                                                    "train.data.duplicates=drop drops such lines, counted)")
            first_line[key] = line
        except DataError as e:
            summary.refused += 1
            if on_error == "raise":
                raise
            errors.append(e)
            continue
        examples.append(ex)
        summary.examples_accepted += 1
        summary.examples_per_task[ex.task] = summary.examples_per_task.get(ex.task, 0) + 1
        if truncated:
            summary.examples_truncated_negatives += 1
            summary.negatives_dropped += truncated
        if padded:
            summary.examples_padded += 1
            summary.negatives_padded += padded
        if draws:
            summary.examples_resampled += 1
            summary.negatives_resampled += draws
        if count_tokens is not None:
            summary.over_max_length["query"] += count_tokens(ex.query) > max_length
            summary.over_max_length["pos"] += count_tokens(ex.pos) > max_length
            originals = ex.neg[: num_negatives - draws - padded]
            summary.over_max_length["neg"] += sum(count_tokens(n) > max_length for n in originals)

    if errors:
        listed = "\n".join(f"  {e}" for e in errors[:MAX_LISTED_ERRORS])
        more = len(errors) - MAX_LISTED_ERRORS
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise DataError(
            f"{path}: {len(errors)} invalid line(s) of {summary.lines_read}:\n{listed}{tail}",
            errors=errors, summary=summary,
        )
    if not examples:
        raise DataError(f"{path}: no examples (file has {summary.lines_read} line(s))", summary=summary)
    return LoadResult(examples=examples, summary=summary)


def _parse_line(path, line, text, registry, num_negatives, allow_resampling, seed):
    """One line -> (Example, negatives dropped, resampling draws, padded slots, uses ids). Raises DataError."""
    try:
        obj = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except ValueError as e:  # json.JSONDecodeError is a ValueError; so is a duplicate key
        raise _line_error(path, line, None, f"malformed JSON: {e}") from None
    if not isinstance(obj, dict):
        raise _line_error(path, line, None, f"expected a JSON object, got {_json_type(obj)}")
    for key in obj:
        if key not in ALL_FIELDS:
            hits = close_matches(key, list(ALL_FIELDS))
            hint = f" Did you mean {hits[0]!r}?" if hits else ""
            raise _line_error(
                path, line, key, f"unknown field.{hint} Valid fields: {', '.join(ALL_FIELDS)}"
            )
    for key in REQUIRED_FIELDS:
        if key not in obj:
            raise _line_error(path, line, key, "missing required field")

    task = _check_text(path, line, "task", obj["task"])
    if task not in registry:
        hits = registry.suggest(task)
        hint = f" Close matches: {', '.join(hits)}." if hits else ""
        raise _line_error(path, line, "task", f"unknown task {task!r} (not in {registry.source}).{hint}")
    query = _check_text(path, line, "query", obj["query"])
    pos = _check_text(path, line, "pos", obj["pos"])
    neg = _check_str_list(path, line, "neg", obj["neg"])

    uses_ids = "pos_id" in obj or "neg_ids" in obj
    pos_id, neg_ids = None, None
    if uses_ids:
        for key in OPTIONAL_FIELDS:
            if key not in obj:
                other = [k for k in OPTIONAL_FIELDS if k != key][0]
                raise _line_error(path, line, key, f"missing; it must be given together with '{other}'")
        pos_id = _check_text(path, line, "pos_id", obj["pos_id"])
        neg_ids = _check_str_list(path, line, "neg_ids", obj["neg_ids"])
        if len(neg_ids) != len(neg):
            raise _line_error(
                path, line, "neg_ids", f"has {len(neg_ids)} ids but 'neg' has {len(neg)} texts"
            )

    for i, n in enumerate(neg):
        if n == pos:
            raise _line_error(path, line, f"neg[{i}]", "the positive text is repeated among the negatives")
        if neg_ids is not None and neg_ids[i] == pos_id:
            raise _line_error(
                path, line, f"neg_ids[{i}]", f"the positive id {pos_id!r} is repeated among the negatives"
            )

    if not neg:
        raise _line_error(path, line, "neg", "no hard negatives (at least 1 is required)")
    truncated, draws, padded = 0, 0, 0
    label_set = registry[task].kind in ("classification", "clustering")
    if len(neg) < num_negatives and label_set:
        padded = num_negatives - len(neg)
        picks = [j % len(neg) for j in range(padded)]
        neg = neg + [neg[j] for j in picks]
        neg_ids = neg_ids + [neg_ids[j] for j in picks] if neg_ids is not None else None
    if len(neg) > num_negatives:
        truncated = len(neg) - num_negatives
        neg = neg[:num_negatives]
        neg_ids = neg_ids[:num_negatives] if neg_ids is not None else None
    elif len(neg) < num_negatives:
        if not allow_resampling:
            raise _line_error(
                path, line, "neg",
                f"has {len(neg)} hard negatives, {num_negatives} required "
                "(allow_negative_resampling draws the rest from this example's own negatives)",
            )
        draws = num_negatives - len(neg)
        rng = _resample_rng(seed, line)
        picks = [rng.randrange(len(neg)) for _ in range(draws)]
        neg = neg + [neg[j] for j in picks]
        neg_ids = neg_ids + [neg_ids[j] for j in picks] if neg_ids is not None else None

    example = Example(
        task=task, query=query, pos=pos, neg=tuple(neg), pos_id=pos_id,
        neg_ids=tuple(neg_ids) if neg_ids is not None else None, line=line,
    )
    return example, truncated, draws, padded, uses_ids
