"""GradCache is the recompute: the stage configs turn megatron's full recompute off, and the memory
bound that remains holds (CPU, tiny model, fp32).

GradCache embeds every chunk without gradients, then re-runs one chunk at a time with gradients and
back-propagates it before the next: a step holds one chunk's activations through all layers, plus
the batch's cached embeddings ([n, d]) and the loss's scores ([b, n]). So its peak activation memory
grows with the chunk's padded tokens (``train.chunking.max_chunk_tokens``), not with the batch.
Megatron's full recompute on top would keep one layer's activations instead of all layers', at the
price of a third forward per step; the stage configs leave it off. Memory: the benchmark's step peak
(PyTorch's CPU allocator traced by the profiler), measured on a step after one warm-up step.
"""
from __future__ import annotations

import json

import pytest

import torch
from conftest import REPO, tiny_config

TASKS = str(REPO / "conf" / "tasks.yaml")


def _compose(stage: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose(config_name=stage)


def test_stage_configs_leave_the_recompute_to_grad_cache():
    for stage in ("stage1", "stage2"):
        cfg = _compose(stage)
        assert cfg.train.chunking.grad_cache is True, stage
        assert cfg.model.recompute.granularity is None, stage
        assert cfg.train.chunking.max_chunk_tokens > 0, stage  # the memory bound needs a token cap


def _write(path, n: int):
    """n examples of uniform length (~40-token queries, ~60-token passages): chunks fill to the cap."""
    rows = [{"task": "PyDocRetrieval", "query": f"question {i} " + "about a topic " * 12,
             "pos": f"passage {i} " + "with some words " * 15, "pos_id": f"p{i}",
             "neg": [f"negative {i} " + "other words here " * 15], "neg_ids": [f"n{i}"]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _step_peak(model, data, queries: int, cap: int, packed: bool) -> tuple[float, int]:
    """(step peak GiB, chunks) of one GradCache step of ``queries`` queries with chunks of <= ``cap`` padded
    tokens (packed: real tokens)."""
    from nemo_nvembed.benchmark.counters import step_peak_memory
    from nemo_nvembed.data.jsonl import load_examples
    from nemo_nvembed.data.tasks import TaskRegistry
    from nemo_nvembed.training import chunking
    from nemo_nvembed.training.batches import BatchStream
    from nemo_nvembed.training.config import stage_train_config
    from nemo_nvembed.training.objective import ContrastiveObjective

    tcfg = stage_train_config("stage1", [
        f"train.data.path={data}", f"train.data.tasks={TASKS}", "train.data.num_negatives=1",
        f"train.data.global_batch_size={queries}", "train.data.query_max_length=128", "train.data.doc_max_length=128",
        "train.chunking.chunk_size=1000", f"train.chunking.max_chunk_tokens={cap}",  # the token cap governs
        f"train.chunking.packed={str(packed).lower()}", f"train.chunking.pack_tokens={cap}"])
    registry = TaskRegistry.from_yaml(TASKS)
    exs = load_examples(data, registry, 1).examples[:queries]
    batch = BatchStream(exs, None, registry, model.text, tcfg.data, True, start=lambda: 0).collate(0, exs)
    objective = ContrastiveObjective(tcfg, queries, seed=0)

    def step():
        model.zero_grad(set_to_none=True)
        objective.step(model, batch)  # GradCache: back-propagates itself

    step()
    c = tcfg.chunking
    n_chunks = len(chunking.plan_for(batch.docs, c))
    return step_peak_memory(step, "cpu"), n_chunks


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_grad_cache_memory_grows_with_the_chunk_not_the_batch(packed, tokenizer_file, single_process, tmp_path):
    from nemo_nvembed.models.network import NVEmbedNetwork

    data = tmp_path / "train.jsonl"
    _write(data, 64)
    model = NVEmbedNetwork(tiny_config(tokenizer_file)).train()  # recompute off (tiny.yaml), LoRA dropout on
    assert model.backbone.config.recompute_granularity is None
    small, n_small = _step_peak(model, data, 8, 512, packed)
    big, n_big = _step_peak(model, data, 64, 512, packed)
    wide, _ = _step_peak(model, data, 64, 2048, packed)
    print(f"step peak MiB: 8 queries {small * 1024:.2f} ({n_small} passage chunks), 64 queries {big * 1024:.2f} ({n_big}), 64 queries with 4x the cap {wide * 1024:.2f}")
    assert n_big >= 4 * n_small  # 8x the batch: many more chunks of the same size ...
    assert big <= 1.25 * small, (small, big)  # ... the same peak: the bound is the chunk
    assert wide >= 1.8 * big, (big, wide)  # 4x the chunk tokens: the peak follows them
