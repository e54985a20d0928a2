"""Model-independent data pipeline: task registry, JSONL loader/validator, global-batch sampler."""

from nemo_nvembed.data.jsonl import DataError, Example, LoadResult, LoadSummary, load_examples
from nemo_nvembed.data.sampler import GlobalBatchSampler
from nemo_nvembed.data.tasks import Task, TaskConfigError, TaskRegistry, UnknownTaskError

__all__ = [
    "DataError", "Example", "GlobalBatchSampler", "LoadResult", "LoadSummary", "Task",
    "TaskConfigError", "TaskRegistry", "UnknownTaskError", "load_examples",
]
