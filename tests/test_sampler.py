"""GlobalBatchSampler: determinism, sharding, task proportions, resume equivalence (CPU)."""

import json
from collections import Counter

import numpy as np
import pytest

from nemo_nvembed.data.sampler import GlobalBatchSampler
from nemo_nvembed.data.tasks import TaskRegistry, UnknownTaskError


def make_registry(weights):
    return TaskRegistry.from_dict(
        {"tasks": {t: dict(kind="retrieval", weight=w, in_batch_negatives=True,
                           train_instruction="x", eval_instruction="x") for t, w in weights.items()}},
        source="test-tasks",
    )


def interleaved(sizes):
    """task_of_example with tasks interleaved (index order does not group tasks)."""
    out, left = [], dict(sizes)
    while any(left.values()):
        for t in sizes:
            if left[t]:
                out.append(t)
                left[t] -= 1
    return out


def sampler(tasks, weights, B=8, rank=0, size=1, seed=0, mode="blend"):
    return GlobalBatchSampler(tasks, make_registry(weights), B, rank, size, seed, mode)


TASKS = interleaved({"A": 30, "B": 20, "C": 7})
WEIGHTS = {"A": 2.0, "B": 1.0, "C": 1.0, "Unused": 5.0}


@pytest.mark.parametrize("mode", ["blend", "homogeneous"])
def test_deterministic_and_seed_dependent(mode):
    a = sampler(TASKS, WEIGHTS, mode=mode).global_batches(0, 20)
    b = sampler(TASKS, WEIGHTS, mode=mode).global_batches(0, 20)
    c = sampler(TASKS, WEIGHTS, mode=mode, seed=1).global_batches(0, 20)
    assert a == b and a != c
    assert all(len(g) == 8 for g in a)
    s = sampler(TASKS, WEIGHTS, mode=mode)
    assert s.global_batches(5, 3) == a[5:8] and s.step == 0  # random access leaves state alone


@pytest.mark.parametrize("mode", ["blend", "homogeneous"])
def test_rank_shards_are_contiguous_disjoint_and_cover(mode):
    size = 4
    glob = sampler(TASKS, WEIGHTS, B=16, mode=mode).global_batches(0, 10)
    shards = [sampler(TASKS, WEIGHTS, B=16, rank=r, size=size, mode=mode).batches(0, 10)
              for r in range(size)]
    for step, g in enumerate(glob):
        parts = [shards[r][step] for r in range(size)]
        assert all(len(p) == 4 for p in parts)
        assert sum(parts, []) == g  # rank r holds positions [4r, 4r+4)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="not divisible by dp_size"):
        sampler(TASKS, WEIGHTS, B=10, size=4)
    with pytest.raises(ValueError, match="dp_rank 4 out of range"):
        sampler(TASKS, WEIGHTS, B=8, rank=4, size=4)
    with pytest.raises(ValueError, match="mode must be one of"):
        sampler(TASKS, WEIGHTS, mode="mixed")
    with pytest.raises(UnknownTaskError, match=r"'Q' .*\(task of example 2\)"):
        sampler(["A", "B", "Q"], WEIGHTS)


def test_blend_mixes_every_batch_by_weight():
    tasks = interleaved({"A": 40, "B": 40})
    for g in sampler(tasks, {"A": 3.0, "B": 1.0}).global_batches(0, 30):
        assert Counter(tasks[i] for i in g) == {"A": 6, "B": 2}  # 8 * 3/4 and 8 * 1/4, every batch


def test_blend_long_run_proportions_track_weights():
    tasks = interleaved({"A": 13, "B": 11, "C": 5})
    weights = {"A": 0.5, "B": 0.3, "C": 0.2}
    batches = sampler(tasks, weights, B=6).global_batches(0, 200)
    count = Counter()
    for n, g in enumerate(batches, start=1):
        count.update(tasks[i] for i in g)
        for t, w in weights.items():  # every prefix stays within 1 example of its share
            assert abs(count[t] - 6 * n * w) <= 1.0 + 1e-9, (n, t, count)


def test_homogeneous_batches_are_single_task_and_chosen_by_weight():
    batches = sampler(TASKS, WEIGHTS, mode="homogeneous").global_batches(0, 400)
    per_batch = [{TASKS[i] for i in g} for g in batches]
    assert all(len(s) == 1 for s in per_batch)
    chosen = Counter(next(iter(s)) for s in per_batch)
    assert chosen == {"A": 200, "B": 100, "C": 100}  # weights 2:1:1 over tasks present


def test_single_task_is_a_plain_shuffled_epoch_order():
    n, B = 24, 6
    s = sampler(["A"] * n, {"A": 1.0}, B=B)
    batches = s.global_batches(0, 3 * n // B)
    epochs = [sum(batches[e * 4:(e + 1) * 4], []) for e in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(n))  # each epoch visits every example once
    assert epochs[0] != list(range(n)) and epochs[0] != epochs[1]  # shuffled, reshuffled per epoch


def test_examples_seen_equally_often_over_full_passes():
    # B=6, weights 2:1 -> A takes 4 per batch, B 2; sizes 8 and 4 -> one pass each every 2 steps.
    tasks = interleaved({"A": 8, "B": 4})
    s = sampler(tasks, {"A": 2.0, "B": 1.0}, B=6)
    counts = s.seen_counts(10)
    assert counts.tolist() == [5] * len(tasks)
    # At any step, within a task, counts differ by at most one (one pass = each once).
    ragged = sampler(TASKS, WEIGHTS, B=8)
    for steps in (1, 3, 7, 50):
        counts = ragged.seen_counts(steps)
        assert counts.sum() == 8 * steps
        for t in "ABC":
            c = counts[[i for i, x in enumerate(TASKS) if x == t]]
            assert c.max() - c.min() <= 1, (steps, t, c)


@pytest.mark.parametrize("mode", ["blend", "homogeneous"])
def test_resume_equals_uninterrupted(mode, tmp_path):
    reference = sampler(TASKS, WEIGHTS, B=8, rank=1, size=2, mode=mode).batches(0, 40)

    first = sampler(TASKS, WEIGHTS, B=8, rank=1, size=2, mode=mode)
    it = iter(first)
    before = [next(it) for _ in range(17)]
    state = first.state_dict()
    assert state["step"] == 17
    (tmp_path / "state.json").write_text(json.dumps(state))  # plain Python: serialisable

    resumed = sampler(TASKS, WEIGHTS, B=8, rank=1, size=2, mode=mode)
    resumed.load_state_dict(json.loads((tmp_path / "state.json").read_text()))
    after = [next(iter(resumed)) for _ in range(23)]
    assert before + after == reference
    assert first.state_dict_at(30) == sampler(TASKS, WEIGHTS, B=8, mode=mode).state_dict_at(30)

    # The state is global: a run resumed on a different number of ranks continues the same batches.
    glob = sampler(TASKS, WEIGHTS, B=8, mode=mode).global_batches(17, 5)
    wide = [sampler(TASKS, WEIGHTS, B=8, rank=r, size=4, mode=mode) for r in range(4)]
    for s in wide:
        s.load_state_dict(state)
    for g in glob:
        assert sum((s.next_batch() for s in wide), []) == g


def test_state_from_another_configuration_is_refused():
    state = sampler(TASKS, WEIGHTS).state_dict()
    with pytest.raises(ValueError, match="seed: saved 0 vs now 1"):
        sampler(TASKS, WEIGHTS, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="task_of_example_hash"):
        sampler(list(reversed(TASKS)), WEIGHTS).load_state_dict(state)
    with pytest.raises(ValueError, match="tasks"):
        sampler(TASKS, {**WEIGHTS, "C": 3.0}).load_state_dict(state)


def test_tiny_task_wraps_within_a_batch():
    tasks = ["A"] * 20 + ["B"] * 2
    s = sampler(tasks, {"A": 1.0, "B": 1.0}, B=8)
    counts = s.seen_counts(3)  # B gets 4 slots per batch from 2 examples: two passes per batch
    assert counts[20:].tolist() == [6, 6]
    assert np.all(counts[:20] <= 1)
