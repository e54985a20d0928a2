"""Model-independent data: task registry, training-example loader/validator, global-batch sampler, and the
one of each reader the rest shares: JSONL (jsonl_io), BEIR folders (beir_folder), tables (tables),
BM25 (bm25), near-duplicate filter (neardup)."""

from nemo_nvembed.data.jsonl import DataError, Example, LoadResult, LoadSummary, load_examples
from nemo_nvembed.data.sampler import GlobalBatchSampler
from nemo_nvembed.data.tasks import Task, TaskConfigError, TaskRegistry, UnknownTaskError

__all__ = [
    "DataError", "Example", "GlobalBatchSampler", "LoadResult", "LoadSummary", "Task",
    "TaskConfigError", "TaskRegistry", "UnknownTaskError", "load_examples",
]
