"""``NVEmbedNetwork`` as an `mteb <https://github.com/embeddings-benchmark/mteb>`_ (2.x) encoder, used by ``python -m nemo_nvembed.mteb_encoder``.

``python -m nemo_nvembed.mteb_encoder --model X.nemo --tasks T1,T2 [--output-folder DIR]
[--languages eng] [--batch-size N] [--precision bf16] [--tp N]`` runs MTEB tasks (mteb downloads their data) and
prints each task's main score; per-task result JSON files land under ``DIR`` (mteb's result-cache
layout, ``DIR/results/<model>/<revision>/<task>.json``) with ``DIR/summary.json`` beside them.

Instructions are NV-Embed's evaluation instructions (paper Table 7), read from
``conf/tasks.yaml`` (``eval_instruction``) by task name; MTEB's versioned names
(``ArxivClusteringP2P.v2``, ``Touche2020Retrieval.v3``, ``...HardNegatives``) map to the base name.
A query becomes ``Instruct: {instruction}\\nQuery: {text}`` (the model's ``query_template``).
Retrieval-like tasks (retrieval, reranking) give the instruction to queries only, never to
documents; every other task type (classification, clustering, STS, pair classification,
summarization, ...) embeds every input as a query with the instruction, as NV-Embed does. A task
absent from the registry falls back to mteb's own prompt for it, with a warning naming it.

mteb 2.x protocol: ``encode(inputs: DataLoader, *, task_metadata, hf_split, hf_subset,
prompt_type, **kwargs) -> array`` plus ``mteb_model_meta``; similarity is cosine.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType

from nemo_nvembed.data.tasks import TaskRegistry
from nemo_nvembed.paths import CONF

logger = logging.getLogger(__name__)

# Task types whose inputs are asymmetric (query vs document): only queries get the instruction.
RETRIEVAL_TYPES = frozenset({"Retrieval", "Reranking", "InstructionRetrieval", "InstructionReranking"})


def registry_name(task_name: str, registry: TaskRegistry) -> str | None:
    """The registry entry for an MTEB task name: exact, else without ``.vN`` / ``HardNegatives`` / ``Retrieval``."""
    base = re.sub(r"\.v\d+$", "", task_name)
    forum = ["CQADupstack"] if base.startswith("CQADupstack") else []  # its 12 forums share one instruction
    for name in (task_name, base, base.removesuffix("HardNegatives"), base.removesuffix("Retrieval"), *forum):
        if name in registry:
            return name
    return None


class NVEmbedMTEBEncoder(AbsEncoder):
    """Wraps a loaded ``NVEmbedNetwork``; batches with the model's own length-sorted ``encode``."""

    def __init__(self, model, *, registry: TaskRegistry | None = None, name: str = "nemo_nvembed/model",
                 revision: str = "local", precision: str = "fp32", batch_size: int = 32, progress: bool = True):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', not {precision!r}")
        self.model = model
        self.registry = registry or TaskRegistry.from_yaml(CONF / "tasks.yaml")
        self.precision, self.batch_size, self.progress = precision, batch_size, progress
        self._warned: set[str] = set()
        self.mteb_model_meta = ModelMeta.create_empty({
            "name": name, "revision": revision, "embed_dim": model.cfg.backbone.hidden_size,
            "max_tokens": model.cfg.max_length, "similarity_fn_name": ScoringFunction.COSINE,
            "use_instructions": True, "framework": ["PyTorch"], "open_weights": True,
        })

    def instruction(self, task_metadata, prompt_type: PromptType | None) -> str | None:
        """NV-Embed's instruction for this task and input side (None: no prefix)."""
        if task_metadata.type in RETRIEVAL_TYPES and prompt_type == PromptType.document:
            return None
        key = registry_name(task_metadata.name, self.registry)
        if key is not None:
            return self.registry[key].eval_instruction
        fallback = self.get_instruction(task_metadata, prompt_type) or None  # mteb's prompt for the task / its type
        if task_metadata.name not in self._warned:
            self._warned.add(task_metadata.name)
            logger.warning("task %s is not in %s: using mteb's instruction %r", task_metadata.name,
                           self.registry.source, fallback)
        return fallback

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str,
               prompt_type: PromptType | None = None, **kwargs) -> np.ndarray:
        texts = [t for batch in inputs for t in batch["text"]]
        emb = self.model.encode(texts, instruction=self.instruction(task_metadata, prompt_type),
                                batch_size=kwargs.get("batch_size") or self.batch_size, precision=self.precision,
                                progress=bool(kwargs.get("show_progress_bar", self.progress)))
        return emb.numpy()  # [n, d] float32


def run(encoder: NVEmbedMTEBEncoder, tasks, output_folder: str | None = None, write: bool = True) -> dict[str, float]:
    """Evaluate ``tasks`` (mteb task objects); results cached under ``output_folder`` when ``write``.

    Every TP rank runs the same evaluation (the encoder is collective over TP); pass
    ``write=False`` on all but one rank. Returns {task name: main score}.
    """
    import mteb

    cache = mteb.ResultCache(cache_path=output_folder) if (output_folder and write) else None
    result = mteb.evaluate(encoder, tasks, cache=cache, overwrite_strategy="always",
                           encode_kwargs={"batch_size": encoder.batch_size, "show_progress_bar": encoder.progress and write},
                           show_progress_bar=write)
    scores = {r.task_name: float(r.get_score()) for r in result.task_results}
    if output_folder and write:
        with open(os.path.join(output_folder, "summary.json"), "w") as f:
            json.dump({"model": encoder.mteb_model_meta.name, "revision": encoder.mteb_model_meta.revision,
                       "main_score": scores}, f, indent=2)
    return scores


def _revision(path: str) -> str:
    """A short tag telling .nemo files apart in mteb's result cache (path, size and mtime; no full read)."""
    st = os.stat(path)
    return hashlib.sha256(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]


def evaluate(model: str, tasks: str, languages: str | None, output_folder: str, batch_size: int, precision: str,
             tp: int | None, tasks_yaml: str) -> None:
    """``python -m nemo_nvembed.mteb_encoder``: run the comma-separated MTEB `tasks` on the .nemo `model`."""
    import mteb

    from nemo_nvembed.parallel import distributed
    from nemo_nvembed.models.network import NVEmbedNetwork

    langs = [x.strip() for x in languages.split(",")] if languages else None
    task_list = mteb.get_tasks(tasks=[t.strip() for t in tasks.split(",") if t.strip()], languages=langs)
    nv = NVEmbedNetwork.load(model, tp=tp or distributed.read_env().world_size)
    rank0 = distributed.is_global_rank_zero()
    encoder = NVEmbedMTEBEncoder(nv, registry=TaskRegistry.from_yaml(tasks_yaml),
                                 name=f"nemo_nvembed/{Path(model).stem}", revision=_revision(model),
                                 precision=precision, batch_size=batch_size, progress=rank0)
    scores = run(encoder, task_list, output_folder, write=rank0)
    if rank0:
        print(json.dumps({"model": model, "output_folder": output_folder, "main_score": scores}, indent=2))
