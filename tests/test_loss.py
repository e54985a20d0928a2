"""Contrastive loss: hand-computed values, masking, stage 2 locality, distillation from a teacher's
vectors, and the 2-rank gloo run whose loss and SUM-reduced gradients must equal one process holding
the whole batch, with and without a teacher (CPU)."""

import itertools
import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from dist_utils import run_distributed
from nemo_nvembed.data.jsonl import Example
from nemo_nvembed.training.loss import Teacher, contrastive_loss

T = 0.5


def reference_loss(q, pos, neg, in_batch, pos_keys, neg_keys, temperature, teacher=None):
    """Plain per-query loop over explicit candidate lists; the whole global batch in one process.
    ``teacher``: (tq, tpos, tneg, weight, teacher temperature): + weight x cross-entropy from the
    teacher's softmax over the same candidates."""
    G, k = neg.shape[:2]
    total = 0.0
    for i in range(G):
        padding = lambda g, j: neg_keys[g][j] in neg_keys[g][:j]  # noqa: E731 (a repeated slot: scored as absent)
        rows = [("p", i)] + [("n", i, j) for j in range(k) if not padding(i, j)]
        if in_batch[i]:
            for g in range(G):
                if g == i:
                    continue
                rows += [("p", g)] if pos_keys[g] != pos_keys[i] else []
                rows += [("n", g, j) for j in range(k) if neg_keys[g][j] != pos_keys[i] and not padding(g, j)]

        def sims_of(qq, pp, nn):
            return torch.stack([F.cosine_similarity(qq[i], pp[r[1]] if r[0] == "p" else nn[r[1], r[2]], dim=0)
                                for r in rows])

        sims = sims_of(q, pos, neg) / temperature
        total = total + (torch.logsumexp(sims, 0) - sims[0])
        if teacher is not None:
            tq, tp, tn, weight, tt = teacher
            soft = torch.softmax(sims_of(tq, tp, tn) / tt, 0)
            total = total - weight * (soft * torch.log_softmax(sims, 0)).sum()
    return total / G


def loss_of(q, pos, neg, in_batch, pos_keys=None, neg_keys=None, temperature=T, **kw):
    b, k = neg.shape[:2]
    pos_keys = pos_keys or [f"p{i}" for i in range(b)]
    neg_keys = neg_keys or [[f"n{i}.{j}" for j in range(k)] for i in range(b)]
    in_batch = torch.tensor(in_batch, dtype=torch.bool)
    kw.setdefault("global_batch_size", b)
    return contrastive_loss(q, pos, neg, temperature=temperature, in_batch=in_batch,
                            pos_keys=pos_keys, neg_keys=neg_keys, **kw)


def hand_case():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # not normalised on purpose
    pos = torch.tensor([[3.0, 0.0], [0.0, 1.0]])  # cos(q0,pos0)=1, cos(q1,pos1)=1
    neg = torch.tensor([[[0.0, 1.0]], [[1.0, 1.0]]])  # cos(q0,neg0)=0, cos(q1,neg1)=1/sqrt2
    return q, pos, neg


def ce(logits):
    """-log softmax(logits)[0] for a list of floats (target = first)."""
    return math.log(sum(math.exp(x) for x in logits)) - logits[0]


R2 = 1 / math.sqrt(2)


@pytest.mark.parametrize(
    "in_batch, pos_keys, neg_keys, expected_logits, masked",
    [
        ([False, False], None, None, [[1, 0], [1, R2]], 0),  # stage 2: own candidates only
        ([True, True], None, None, [[1, 0, 0, R2], [1, R2, 0, 1]], 0),  # + pos/neg of the other query
        ([True, False], None, None, [[1, 0, 0, R2], [1, R2]], 0),  # per-query switch
        ([True, True], ["d", "d"], None, [[1, 0, R2], [1, R2, 1]], 2),  # same positive id: masked
        ([True, True], ["d0", "d1"], [["x"], ["d0"]], [[1, 0, 0], [1, R2, 0, 1]], 1),  # neg == my pos
    ],
)
def test_hand_computed(in_batch, pos_keys, neg_keys, expected_logits, masked):
    q, pos, neg = hand_case()
    out = loss_of(q, pos, neg, in_batch, pos_keys, neg_keys)
    expected = sum(ce([x / T for x in row]) for row in expected_logits) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.global_loss.item() == pytest.approx(expected, rel=1e-6)
    assert int(out.num_masked) == masked
    assert out.num_candidates.tolist() == [len(r) for r in expected_logits]


def test_masking_by_text_and_by_id_via_example_keys():
    # Same positive text, no ids -> masked by text; with distinct ids -> not masked.
    by_text = [Example("NQ", "q0", "Paris", ("a",)), Example("NQ", "q1", "Paris", ("b",))]
    by_id = [Example("NQ", "q0", "Paris", ("a",), "d0", ("i0",)),
             Example("NQ", "q1", "Paris", ("b",), "d1", ("i1",))]
    q, pos, neg = hand_case()
    for examples, masked in ((by_text, 2), (by_id, 0)):
        out = loss_of(q, pos, neg, [True, True], [e.pos_key for e in examples],
                      [list(e.neg_keys) for e in examples])
        assert int(out.num_masked) == masked


def random_batch(G=6, k=3, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(G, d, generator=g), torch.randn(G, d, generator=g),
            torch.randn(G, k, d, generator=g))


def test_matches_plain_reference_values_and_gradients():
    q, pos, neg = (t.requires_grad_() for t in random_batch())
    in_batch = [True, False, True, True, False, True]
    pos_keys = ["a", "b", "a", "c", "d", "e"]  # queries 0 and 2 share a positive
    neg_keys = [["x", "y", "z"], ["e", "w", "v"], ["u", "t", "s"],
                ["a", "r", "o"], ["m", "l", "k"], ["j", "c", "h"]]  # some negatives = others' positives
    out = loss_of(q, pos, neg, in_batch, pos_keys, neg_keys)
    ref = reference_loss(q, pos, neg, in_batch, pos_keys, neg_keys, T)
    torch.testing.assert_close(out.loss, ref)
    got = torch.autograd.grad(out.loss, (q, pos, neg))
    want = torch.autograd.grad(ref, (q, pos, neg))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("in_batch", [[True, False, True, True, False, True], [False] * 6])
def test_distillation_matches_plain_reference(in_batch):
    """train.distill: + weight x the teacher's soft cross-entropy over exactly the student's candidates
    (masked duplicates and padding excluded), value and gradients; the teacher gets none."""
    q, pos, neg = (t.requires_grad_() for t in random_batch())
    g = torch.Generator().manual_seed(7)
    tq, tp, tn = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g), torch.randn(6, 3, 5, generator=g)
    pos_keys = ["a", "b", "a", "c", "d", "e"]
    neg_keys = [["x", "y", "x"], ["e", "w", "v"], ["u", "t", "s"],
                ["a", "r", "o"], ["m", "l", "k"], ["j", "c", "h"]]  # query 0: a padding slot
    out = loss_of(q, pos, neg, in_batch, pos_keys, neg_keys, teacher=Teacher(tq, tp, tn, 0.7, 0.3))
    plain = loss_of(q, pos, neg, in_batch, pos_keys, neg_keys)
    ref = reference_loss(q, pos, neg, in_batch, pos_keys, neg_keys, T, teacher=(tq, tp, tn, 0.7, 0.3))
    torch.testing.assert_close(out.loss, ref)
    torch.testing.assert_close(out.distill_loss * 0.7, out.loss.detach() - plain.loss.detach())
    for a, b in zip(torch.autograd.grad(out.loss, (q, pos, neg)), torch.autograd.grad(ref, (q, pos, neg))):
        torch.testing.assert_close(a, b)


def test_stage2_ignores_other_queries_passages():
    q, pos, neg = random_batch()
    G = q.shape[0]

    def grads(pos_, neg_, flag):
        q_ = q.clone().requires_grad_()
        p_, n_ = pos_.clone().requires_grad_(), neg_.clone().requires_grad_()
        out = loss_of(q_, p_, n_, [flag] * G)
        gq, gp, gn = torch.autograd.grad(out.loss, (q_, p_, n_))
        return gq[0], gp[0], gn[0]

    pos2, neg2 = pos.clone(), neg.clone()
    pos2[1:] = torch.randn_like(pos2[1:])
    neg2[1:] = torch.randn_like(neg2[1:])
    for a, b in zip(grads(pos, neg, False), grads(pos2, neg2, False)):
        torch.testing.assert_close(a, b)  # query 0 sees nothing of the other queries
    assert not torch.allclose(grads(pos, neg, True)[0], grads(pos2, neg2, True)[0])  # stage 1 does
    # And the stage 2 loss is the mean of one-example losses.
    whole = loss_of(q, pos, neg, [False] * G).loss
    alone = sum(loss_of(q[i:i + 1], pos[i:i + 1], neg[i:i + 1], [False]).loss for i in range(G)) / G
    torch.testing.assert_close(whole, alone)


def test_argument_checks():
    q, pos, neg = hand_case()
    with pytest.raises(ValueError, match="global_batch_size 4"):
        loss_of(q, pos, neg, [True, True], global_batch_size=4)
    with pytest.raises(ValueError, match="temperature"):
        loss_of(q, pos, neg, [True, True], temperature=0.0)
    with pytest.raises(ValueError, match="shape mismatch"):
        loss_of(q, pos[:1], neg, [True, True])


# --- data parallel: 2 gloo processes vs 1 process holding the whole global batch ---------------

G, K, D_IN, D_OUT = 8, 3, 6, 4
CASES = {
    # cross-rank duplicates: query 1 (rank 0) and query 6 (rank 1) share a positive id;
    # query 5's negative 2 is query 0's positive.
    "stage1": ([True] * G, ["d0", "dup", "d2", "d3", "d4", "d5", "dup", "d7"]),
    "mixed": ([False, False, False, False, True, False, True, True], ["d0", "dup", "d2", "d3", "d4", "d5", "dup", "d7"]),
    "stage2": ([False] * G, [f"d{i}" for i in range(G)]),
}


def dp_inputs():
    g = torch.Generator().manual_seed(1)
    xq, xp, xn = torch.randn(G, D_IN, generator=g), torch.randn(G, D_IN, generator=g), torch.randn(G, K, D_IN, generator=g)
    neg_keys = [[f"n{i}.{j}" for j in range(K)] for i in range(G)]
    neg_keys[5][2] = "d0"
    return xq, xp, xn, neg_keys


def encode_and_loss(rows, xq, xp, xn, in_batch, pos_keys, neg_keys, group, teach=False):
    torch.manual_seed(0)  # the "replicated" encoder: identical init on every rank
    encoder = torch.nn.Linear(D_IN, D_OUT)
    teacher = None
    if teach:  # a fixed other encoder's vectors (train.distill): gathered like the student's
        with torch.no_grad():
            t = torch.nn.Linear(D_IN, 5)
            teacher = Teacher(t(xq[rows]), t(xp[rows]), t(xn[rows]), 0.5, 0.1)
    out = contrastive_loss(
        encoder(xq[rows]), encoder(xp[rows]), encoder(xn[rows]), temperature=0.05,
        in_batch=torch.tensor(in_batch)[rows], pos_keys=[pos_keys[i] for i in rows],
        neg_keys=[neg_keys[i] for i in rows], global_batch_size=G, group=group, teacher=teacher,
    )
    out.loss.backward()
    return out, [p.grad.clone() for p in encoder.parameters()]


def _dp_worker(rank, world_size, xq, xp, xn, neg_keys):
    b = G // world_size
    rows = list(range(rank * b, (rank + 1) * b))
    results = {}
    for name, (in_batch, pos_keys) in CASES.items():
        for teach in (False, True):
            out, grads = encode_and_loss(rows, xq, xp, xn, in_batch, pos_keys, neg_keys, dist.group.WORLD, teach)
            for g in grads:
                dist.all_reduce(g, op=dist.ReduceOp.SUM)  # the training strategy's contract: SUM
            local = out.loss.detach().clone()
            dist.all_reduce(local, op=dist.ReduceOp.SUM)
            results[name, teach] = {"loss_sum": local, "global_loss": out.global_loss, "grads": grads,
                                    "num_masked": int(out.num_masked), "distill_loss": out.distill_loss}
    return results


def test_two_gloo_ranks_equal_one_process():
    xq, xp, xn, neg_keys = dp_inputs()
    per_rank = run_distributed(_dp_worker, 2, xq, xp, xn, neg_keys)
    for (name, (in_batch, pos_keys)), teach in itertools.product(CASES.items(), (False, True)):
        single, grads = encode_and_loss(list(range(G)), xq, xp, xn, in_batch, pos_keys, neg_keys, None, teach)
        for r in per_rank:
            got = r[name, teach]
            torch.testing.assert_close(got["loss_sum"], single.loss.detach())
            torch.testing.assert_close(got["global_loss"], single.global_loss)
            if teach:  # the distillation term too, gathered teacher passages included
                torch.testing.assert_close(got["distill_loss"], single.distill_loss)
            for g, want in zip(got["grads"], grads):
                torch.testing.assert_close(g, want)
        assert sum(r[name, teach]["num_masked"] for r in per_rank) == int(single.num_masked)
    assert per_rank[0]["stage1", False]["num_masked"] > 0 and per_rank[1]["stage1", False]["num_masked"] > 0
