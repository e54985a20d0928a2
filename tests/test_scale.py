"""GradCache, activation recompute and length-aware chunking against the plain step (fp32, tiny)."""
from __future__ import annotations

import pytest
import torch
from conftest import model_with_random_lora, tiny_config
from dist_utils import run_distributed
from test_training import contrastive_step, write_examples


def make_step(model, data_path, global_batch, dp_rank, dp_size, chunking: dict, in_batch=True):
    return contrastive_step(model, data_path, global_batch, dp_rank, dp_size, chunking, in_batch)


def assert_grads_close(a, b):
    assert a.keys() == b.keys() and a
    for k in a:
        scale = b[k].abs().max().item()
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5 * scale + 1e-12, msg=lambda m: f"{k}: {m}")


def random_model(tokenizer_file, **overrides):
    model, full = model_with_random_lora(tokenizer_file, 11, **overrides)
    return model.train(), full  # dropout ON (lora.dropout 0.1 in tiny.yaml)


def _gc_worker(rank, world, tokenizer_file, full, data):
    from nemo_nvembed.parallel import distributed
    from nemo_nvembed.models.network import NVEmbedNetwork

    distributed.initialize(1)
    model = NVEmbedNetwork(tiny_config(tokenizer_file)).train()
    model.load_full_state_dict(full)
    out = []
    # Padded, in batch order: 4 queries per rank in chunks of 3 (a last partial chunk of 1); 16 passages
    # in chunks of 3 (last: 1). Length-aware: the planner's chunks of up to 3, of uneven sizes. Packed
    # (the stage YAML's default): packs of at most 40 tokens, several per rank.
    for c in ({"packed": False, "chunk_size": 3, "length_aware": False},
              {"packed": False, "chunk_size": 3, "length_aware": True},
              {"packed": True, "pack_tokens": 40}):
        out.append((make_step(model, data, 8, rank, world, {**c, "grad_cache": False}),
                    make_step(model, data, 8, rank, world, {**c, "grad_cache": True})))
    return out


def test_grad_cache_equals_plain_step_on_two_ranks(tokenizer_file, single_process, tmp_path):
    data = tmp_path / "train.jsonl"
    write_examples(data)
    _, full = random_model(tokenizer_file)
    for per_rank in run_distributed(_gc_worker, 2, tokenizer_file, full, data, timeout_s=300):
        for (p_loss, p_grads, _), (c_loss, c_grads, _) in per_rank:
            torch.testing.assert_close(c_loss, p_loss, rtol=1e-5, atol=1e-6)
            assert_grads_close(c_grads, p_grads)


def test_dropout_is_really_on_and_replayed(tokenizer_file, single_process, tmp_path):
    """Guard for the test above: with dropout on, different draws give different losses."""
    data = tmp_path / "train.jsonl"
    write_examples(data)
    model, _ = random_model(tokenizer_file, **{"lora.dropout": 0.5})
    a = make_step(model, data, 8, 0, 1, {"packed": False, "chunk_size": 3, "grad_cache": False})[0]
    b = make_step(model, data, 8, 0, 1, {"packed": False, "chunk_size": 3, "grad_cache": True})[0]
    c = make_step(model, data, 8, 0, 1, {"packed": False, "chunk_size": 4, "grad_cache": False})[0]  # other chunks, same draws (keyed)
    e = make_step(model, data, 8, 0, 1, {"packed": True, "pack_tokens": 40, "grad_cache": True})[0]  # packed: same draws
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
    model.eval()  # no dropout: another loss
    d = make_step(model, data, 8, 0, 1, {"packed": False, "chunk_size": 3, "grad_cache": False})[0]
    model.train()
    assert (a - d).abs() > 1e-6


def test_recompute_gives_the_same_gradients(tokenizer_file, single_process, tmp_path):
    from nemo_nvembed.models.network import NVEmbedNetwork

    data = tmp_path / "train.jsonl"
    write_examples(data)
    model, full = random_model(tokenizer_file)
    ref = make_step(model, data, 8, 0, 1, {"chunk_size": 5})
    for granularity in ("full", "selective"):
        rc = NVEmbedNetwork(tiny_config(tokenizer_file, **{"recompute.granularity": granularity})).train()
        rc.load_full_state_dict(full)
        got = make_step(rc, data, 8, 0, 1, {"chunk_size": 5})
        torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-6)
        assert_grads_close(got[1], ref[1])


def test_length_aware_chunks_change_padding_not_the_loss(tokenizer_file, single_process, tmp_path):
    import json

    data = tmp_path / "train.jsonl"
    rows = []
    for i in range(16):  # very different passage lengths
        rows.append({"task": "PyDocRetrieval", "query": f"q {i} " + "word " * (i % 4) * 6, "pos": f"p {i} " + "text " * (3 + 9 * (i % 3)),
                     "neg": [f"n {i} {j} " + "filler " * (2 + 10 * ((i + j) % 3)) for j in range(3)]})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model, _ = random_model(tokenizer_file, **{"lora.dropout": 0.0})
    plain = make_step(model, data, 16, 0, 1, {"chunk_size": 4, "length_aware": False, "packed": False})
    aware = make_step(model, data, 16, 0, 1, {"chunk_size": 4, "length_aware": True, "packed": False})
    assert plain[2]["real"] == aware[2]["real"]  # the same examples and tokens
    assert aware[2]["padded"] < plain[2]["padded"]
    waste = (aware[2]["padded"] - aware[2]["real"]) / aware[2]["padded"]
    assert waste < 0.25, waste
    torch.testing.assert_close(aware[0], plain[0], rtol=1e-5, atol=1e-6)
    assert_grads_close(aware[1], plain[1])


def _brute_force_cost(desc, size, cost, max_tokens):
    """Best padded + cost x chunks over every way to cut ``desc`` into consecutive chunks."""
    from functools import lru_cache

    @lru_cache(None)
    def best(start):
        if start == len(desc):
            return 0
        options = []
        for end in range(start + 1, min(len(desc), start + size) + 1):
            padded = (end - start) * desc[start]
            if max_tokens and padded > max_tokens and end - start > 1:
                continue
            options.append(padded + cost + best(end))
        return min(options)
    return best(0)


@pytest.mark.parametrize("size,cost,max_tokens", [(3, 0, 0), (4, 5, 0), (4, 20, 0), (8, 64, 0), (5, 10, 40)])
def test_chunk_planner_is_optimal_and_complete(size, cost, max_tokens):
    from nemo_nvembed.training import chunking

    g = torch.Generator().manual_seed(size * 100 + cost)
    for _ in range(20):
        n, s = int(torch.randint(1, 13, (1,), generator=g)), 30
        lengths = torch.randint(1, s + 1, (n,), generator=g)
        mask = (torch.arange(s)[None, :] < lengths[:, None]).long()
        chunks = chunking.plan(lengths.tolist(), size, True, cost, max_tokens)
        assert sorted(torch.cat([c.index for c in chunks]).tolist()) == list(range(n))  # each sequence once
        for c in chunks:
            assert len(c.index) <= size and c.length == int(lengths[c.index].max())
            assert not max_tokens or len(c.index) == 1 or len(c.index) * c.length <= max_tokens
        real, padded = chunking.token_counts(lengths.tolist(), chunks)
        assert real == int(lengths.sum())
        desc = sorted(lengths.tolist(), reverse=True)
        assert padded + cost * len(chunks) == _brute_force_cost(tuple(desc), size, cost, max_tokens)


def test_benchmark_batch_for_a_model_with_another_vocabulary(single_process, tmp_path):
    """mistral_7b (vocab 32,000) gets the same real texts through SmolLM2's tokenizer, ids folded."""
    from omegaconf import OmegaConf

    from nemo_nvembed.benchmark import runner as bench
    from nemo_nvembed.demo_data import main as make_demo_data
    from nemo_nvembed.training.batches import BatchStream

    make_demo_data(["--out", str(tmp_path / "data")])
    spec = {"model": "mistral_7b", "layers": 1, "tokenizer": bench._tokenizer_file(tmp_path),
            "data": str(tmp_path / "data" / "stage1.jsonl"), "queries": 2, "negatives": 1}
    cfg, registry, exs, text = bench._setup(spec)
    data_cfg = OmegaConf.create({"query_max_length": 64, "doc_max_length": 64})
    batch = bench.fold_ids(BatchStream(exs, None, registry, text, data_cfg, True, start=lambda: 0).collate(0, exs),
                           cfg.backbone.vocab_size)
    assert int(batch.docs.input_ids.max()) < cfg.backbone.vocab_size == 32000
    assert batch.docs.attention_mask.sum(1).min() > 1


def test_benchmark_reports_a_workers_exception_not_its_last_line():
    """A failed worker is reported by its exception (NCCL's exit warning follows the traceback)."""
    from nemo_nvembed.benchmark.runner import _error_line

    stderr = ("[rank0]: Traceback (most recent call last):\n[rank0]:   File \"x.py\", line 1\n"
              "[rank0]: AssertionError: persist_layer_norm not supported by torch LayerNorm\n"
              "[rank0]:[W1127 03:23:46.035 ProcessGroupNCCL.cpp:1575] Warning: WARNING: destroy_process_group()\n")
    assert _error_line(stderr) == "AssertionError: persist_layer_norm not supported by torch LayerNorm"
    assert _error_line("only a line\n") == "only a line"
