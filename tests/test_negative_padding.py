"""Few-label sets at 7 negatives: padded by the loader, padding masked by the loss (exact)."""
import json
import math

import pytest
import torch

from nemo_nvembed.data.jsonl import DataError, load_examples
from nemo_nvembed.data.tasks import TaskRegistry
from nemo_nvembed.training.loss import contrastive_loss, repeated_slots


def _registry():
    entry = dict(weight=1.0, in_batch_negatives=True, train_instruction="x", eval_instruction="x")
    return TaskRegistry.from_dict({"tasks": {"Bin": {"kind": "classification", **entry},
                                             "Ret": {"kind": "retrieval", **entry}}}, source="test")


def _reference(q, pos, negs, temperature, in_batch, pos_keys, neg_keys):
    """Plain per-query softmax over [pos, DISTINCT own negatives (+ other queries' distinct passages)]."""
    qn = torch.nn.functional.normalize(q, dim=-1)
    pn = torch.nn.functional.normalize(pos, dim=-1)
    nn_ = torch.nn.functional.normalize(negs, dim=-1)
    total = 0.0
    for i in range(len(q)):
        cands = [pn[i]]
        seen = set()
        for j, key in enumerate(neg_keys[i]):
            if key not in seen:
                seen.add(key)
                cands.append(nn_[i, j])
        if in_batch:
            for g in range(len(q)):
                if g == i:
                    continue
                if pos_keys[g] != pos_keys[i]:
                    cands.append(pn[g])
                seen_g = set()
                for j, key in enumerate(neg_keys[g]):
                    if key not in seen_g:
                        seen_g.add(key)
                        if key != pos_keys[i]:
                            cands.append(nn_[g, j])
        logits = torch.stack([qn[i] @ c for c in cands]) / temperature
        total += -torch.log_softmax(logits, 0)[0]
    return total / len(q)


@pytest.mark.parametrize("in_batch", [False, True])
def test_loss_with_padding_equals_loss_over_distinct_negatives(in_batch):
    torch.manual_seed(0)
    b, k, d = 3, 7, 8
    q, pos = torch.randn(b, d), torch.randn(b, d)
    distinct = [["n0"], ["m0", "m1"], [f"r{j}" for j in range(k)]]  # binary, 3 labels, full
    neg_keys = [[ks[j % len(ks)] for j in range(k)] for ks in distinct]  # padded as the loader does
    base = {key: torch.randn(d) for ks in distinct for key in ks}
    negs = torch.stack([torch.stack([base[key] for key in row]) for row in neg_keys])  # [b, k, d]
    pos_keys = ["p0", "p1", "p2"]
    out = contrastive_loss(q, pos, negs, temperature=0.05, in_batch=torch.full((b,), in_batch),
                           pos_keys=pos_keys, neg_keys=neg_keys, global_batch_size=b)
    ref = _reference(q, pos, negs, 0.05, in_batch, pos_keys, neg_keys)
    torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-6)
    assert repeated_slots(torch.tensor([[1, 2, 1, 2, 3]])).tolist() == [[False, False, True, True, False]]
    if not in_batch:  # query 0 scores its positive and its one negative only
        assert out.num_candidates.tolist() == [2, 3, 1 + k]


def test_binary_label_set_loads_at_7_negatives_and_retrieval_does_not(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"task": "Bin", "query": "great film", "pos": "positive", "neg": ["negative"],
             "pos_id": "label:positive", "neg_ids": ["label:negative"]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = load_examples(path, _registry(), num_negatives=7)
    ex = res.examples[0]
    assert ex.neg == ("negative",) * 7 and ex.neg_ids == ("label:negative",) * 7
    assert (res.summary.examples_padded, res.summary.negatives_padded) == (1, 6)
    assert "padded label negatives     1 examples, 6 repeated slots" in res.summary.format()
    path.write_text(json.dumps({"task": "Ret", "query": "q", "pos": "p", "neg": ["n"]}) + "\n")
    with pytest.raises(DataError, match=r"has 1 hard negatives, 7 required"):
        load_examples(path, _registry(), num_negatives=7)


def test_binary_csv_converts_and_loads_without_override(tmp_path):
    from nemo_nvembed import convert_data as cd
    from nemo_nvembed.paths import CONF

    src = tmp_path / "imdb.jsonl"
    src.write_text("".join(json.dumps({"text": f"review number {i} " + ("good" if i % 2 else "bad"),
                                       "label_text": "positive" if i % 2 else "negative"}) + "\n" for i in range(6)))
    out = tmp_path / "o.jsonl"
    cd.main(["classification", "--input", str(src), "--text-col", "text", "--label-col", "label_text",
             "--task", "ImdbClassification", "--out", str(out)])
    res = load_examples(out, TaskRegistry.from_yaml(CONF / "tasks.yaml"), num_negatives=7)
    assert res.summary.examples_accepted == 6 and res.summary.examples_padded == 6
    assert not math.isnan(len(res.examples))
