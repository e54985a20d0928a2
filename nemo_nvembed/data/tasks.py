"""Task registry: instructions, kinds and sampling weights per task (conf/tasks.yaml).

The YAML is merged onto a structured schema (`TaskRegistryFile`), so a misspelled key, a wrong
type or an unknown kind fails with the file and the full key named; every field is required
(`???`), nothing is defaulted in code. Instructions come from NV-Embed Tables 6 (training) and
7 (evaluation); queries are formatted as "Instruct: {instruction}\\nQuery: {query}" (section 3.4)
by the model code, not here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Union

from omegaconf import MISSING

from nemo_nvembed.checks.errors import UserError
from nemo_nvembed.checks.schema import close_matches, did_you_mean, load_yaml, merge_onto_schema


class TaskKind(str, Enum):
    """How a task's contrastive pairs are built (NV-Embed section 4.2)."""

    retrieval = "retrieval"
    classification = "classification"
    clustering = "clustering"
    sts = "sts"


@dataclass
class TaskSpec:
    """Schema of one entry under `tasks:` in conf/tasks.yaml (all fields required)."""

    kind: TaskKind = MISSING
    weight: float = MISSING
    in_batch_negatives: bool = MISSING
    train_instruction: str = MISSING
    eval_instruction: str = MISSING


@dataclass
class TaskRegistryFile:
    """Schema of the whole registry file."""

    tasks: Dict[str, TaskSpec] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """A validated task. `kind` is the plain string value of `TaskKind`."""

    name: str
    kind: str
    weight: float
    in_batch_negatives: bool
    train_instruction: str
    eval_instruction: str


class TaskConfigError(UserError):
    """The registry file is invalid; the message names the file and the key."""


class UnknownTaskError(UserError, LookupError):
    """A task name that the registry does not hold; the message lists close matches."""


class TaskRegistry:
    """Validated, read-only mapping from task name to `Task`."""

    def __init__(self, tasks: Mapping[str, Task], source: str):
        self._tasks: Dict[str, Task] = dict(tasks)
        self.source = source

    @classmethod
    def from_yaml(cls, path: Union[str, Path]) -> "TaskRegistry":
        path = Path(path)
        return cls.from_dict(load_yaml(path, "task registry file", TaskConfigError), source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str) -> "TaskRegistry":
        """Validate `data` (a dict or DictConfig shaped like conf/tasks.yaml).

        `source` names where the data came from, for error messages.
        """
        merged = merge_onto_schema(
            TaskRegistryFile, data, source, TaskConfigError,
            valid_keys=lambda parent: list(TaskSpec.__dataclass_fields__) if parent.startswith("tasks.") else ["tasks"])
        tasks: Dict[str, Task] = {}
        for name, spec in merged.tasks.items():
            where = f"{source}: tasks.{name}"
            if not name.strip():
                raise TaskConfigError(f"{source}: empty task name under tasks")
            if not (math.isfinite(spec.weight) and spec.weight > 0):
                raise TaskConfigError(f"{where}.weight: must be finite and > 0, got {spec.weight}")
            for key in ("train_instruction", "eval_instruction"):
                if not str(spec[key]).strip():
                    raise TaskConfigError(f"{where}.{key}: must be a non-empty string")
            tasks[name] = Task(
                name=name,
                kind=spec.kind.value,
                weight=float(spec.weight),
                in_batch_negatives=bool(spec.in_batch_negatives),
                train_instruction=str(spec.train_instruction),
                eval_instruction=str(spec.eval_instruction),
            )
        if not tasks:
            raise TaskConfigError(f"{source}: no tasks defined under `tasks:`")
        return cls(tasks, source)

    def __getitem__(self, name: str) -> Task:
        try:
            return self._tasks[name]
        except KeyError:
            raise UnknownTaskError(
                f"unknown task {name!r} (not in {self.source}).{did_you_mean(name, self.names)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[str]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def names(self) -> List[str]:
        return list(self._tasks)

    def with_weights(self, weights: Mapping[str, float], source: str) -> "TaskRegistry":
        """A copy whose listed tasks get new sampling weights (`source` names the override, for errors).

        Used by the trainer for `train.data.weights_from: examples` and `train.data.task_weights`.
        """
        tasks = dict(self._tasks)
        for name, w in weights.items():
            if name not in tasks:
                raise TaskConfigError(f"{source}: unknown task {name!r} (not in {self.source})."
                                      f"{did_you_mean(name, self.names)}")
            w = float(w)
            if not (math.isfinite(w) and w > 0):
                raise TaskConfigError(f"{source}.{name}: weight must be finite and > 0, got {w}")
            t = tasks[name]
            tasks[name] = Task(t.name, t.kind, w, t.in_batch_negatives, t.train_instruction, t.eval_instruction)
        return TaskRegistry(tasks, self.source)

    def suggest(self, name: str) -> List[str]:
        """Registered names close to `name` (for callers building their own messages)."""
        return close_matches(name, self.names)
