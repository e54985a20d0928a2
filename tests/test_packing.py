"""Packed sequences (models/packing.py, train.chunking.packed) against the padded reference, fp32 on CPU:
embeddings and every gradient for each pooling type and attention mask, with LoRA dropout on (keyed by
sequence and position, so packing changes no mask); and the whole contrastive step (loss and
gradients, GradCache) packed vs padded."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import model_with_random_lora
from test_training import contrastive_step


@pytest.mark.parametrize("pooling", ["latent_attention", "mean", "eos", "self_attention"])
@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_packed_forward_and_gradients_equal_padded(pooling, attention, tokenizer_file, single_process):
    from nemo_nvembed.models import keyed_dropout
    from nemo_nvembed.models.packing import Pack

    net, _ = model_with_random_lora(tokenizer_file, seed=3, **{"pooling.type": pooling, "attention": attention,
                                                               "lora.dropout": 0.1})
    net.train()
    b = net.text(["a longer text of several words about sorting lists", "short", "a medium text on dicts"],
                 instruction="Find it")
    keys = torch.tensor([11, 22, 33])
    pack = Pack.from_padded(b.input_ids, b.attention_mask, b.pool_mask)
    assert pack.input_ids.numel() == int(b.attention_mask.sum())  # no padding in the pack

    def run(packed: bool):
        net.zero_grad(set_to_none=True)
        w = torch.linspace(-1, 1, net.cfg.backbone.hidden_size)
        if packed:
            with keyed_dropout.sequence_keys(keys, pack.segments, pack.positions):
                e = net.forward_packed(pack)
        else:
            with keyed_dropout.sequence_keys(keys):
                e = net(b.input_ids, b.attention_mask, b.pool_mask)
        (e * w).sum().backward()
        return e.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    (e0, g0), (e1, g1) = run(False), run(True)
    torch.testing.assert_close(e1, e0, rtol=1e-5, atol=1e-6)
    assert g0.keys() == g1.keys() and len(g0) > 0
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-6, msg=lambda m: f"{k}: {m}")


def _examples(path, n=12, k=3):
    rows = []
    for i in range(n):  # very different lengths, so padding would be large
        rows.append({"task": "PyDocRetrieval", "query": f"q {i} " + "word " * (i % 4) * 5,
                     "pos": f"p {i} " + "text " * (3 + 8 * (i % 3)),
                     "neg": [f"n {i} {j} " + "filler " * (2 + 9 * ((i + j) % 3)) for j in range(k)]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("grad_cache", [False, True])
def test_packed_contrastive_step_equals_padded(grad_cache, tokenizer_file, single_process, tmp_path):
    data = _examples(tmp_path / "train.jsonl")
    model, _ = model_with_random_lora(tokenizer_file, seed=5, **{"lora.dropout": 0.1})
    model.train()
    padded = contrastive_step(model, data, 12, 0, 1, {"packed": False, "chunk_size": 5, "grad_cache": grad_cache})
    packed = contrastive_step(model, data, 12, 0, 1, {"packed": True, "pack_tokens": 96, "grad_cache": grad_cache})
    assert packed[2]["real"] == padded[2]["real"] == packed[2]["padded"]  # the same tokens, none padded
    assert padded[2]["padded"] > padded[2]["real"]
    torch.testing.assert_close(packed[0], padded[0], rtol=1e-5, atol=1e-6)
    assert packed[1].keys() == padded[1].keys()
    for k in padded[1]:
        torch.testing.assert_close(packed[1][k], padded[1][k], rtol=1e-4, atol=1e-6, msg=lambda m: f"{k}: {m}")


def test_packs_respect_the_token_budget():
    from nemo_nvembed.training.chunking import plan_packs

    lengths = [50, 7, 30, 30, 12, 64, 3, 3, 40]
    packs = plan_packs(lengths, 64)
    assert sorted(int(i) for c in packs for i in c.index) == list(range(len(lengths)))  # each sequence once
    assert all(c.tokens <= 64 for c in packs) and sum(c.tokens for c in packs) == sum(lengths)
    assert len(packs) == 4  # ceil(242 / 64): first-fit decreasing fills them


def test_pack_from_host_lengths_equals_the_masks_selection():
    """Pack.from_rows (host lengths, no tensor read) holds what boolean selection by the masks gives."""
    from nemo_nvembed.models.packing import Pack

    lengths, starts, s = [5, 2, 7, 1], [2, 0, 3, 0], 8
    ids = torch.arange(len(lengths) * s).view(len(lengths), s)
    att = torch.tensor([[int(j < n) for j in range(s)] for n in lengths])
    pool = torch.tensor([[int(p <= j < n) for j in range(s)] for n, p in zip(lengths, starts)])
    pack = Pack.from_rows(ids, lengths, starts)
    real = att.bool()
    assert torch.equal(pack.input_ids, ids[real]) and torch.equal(pack.pool_mask, pool[real])
    assert pack.bounds == [0, 5, 7, 14, 15] and pack.max_length == 7
    assert pack.segments.tolist() == [i for i, n in enumerate(lengths) for _ in range(n)]
    assert pack.positions.tolist() == [j for n in lengths for j in range(n)]
    assert torch.equal(pack.pool_index, pool[real].nonzero().squeeze(1))
    assert pack.pool_count.tolist() == [3.0, 2.0, 4.0, 1.0]
