"""Deterministic, resumable multi-task global-batch sampler.

NV-Embed stage 2 blends retrieval and non-retrieval tasks in every batch (section 5.1,
Table 5); `mode="blend"` does that. `mode="homogeneous"` draws each global batch from a single
task instead (the common alternative; useful when in-batch negatives must stay within a task).
"""

from __future__ import annotations

import copy
import hashlib
import json
from fractions import Fraction
from math import gcd, lcm
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np

from nemo_nvembed.data.tasks import TaskRegistry, UnknownTaskError

MODES = ("blend", "homogeneous")
STATE_VERSION = 1


def _stable_seed(*parts) -> int:
    """64-bit seed from a stable hash (Python's hash() is salted per process)."""
    data = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _integer_weights(weights: Sequence[float]) -> List[int]:
    """Exact integer weights with the same ratios: 0.1 -> 1/10 via its shortest repr."""
    fracs = [Fraction(repr(float(w))) for w in weights]
    denom = lcm(*(f.denominator for f in fracs))
    ints = [int(f * denom) for f in fracs]
    common = gcd(*ints)
    return [i // common for i in ints]


class GlobalBatchSampler:
    """Yields this data-parallel rank's slice of each global batch of example indices.

    Stream construction. The examples of each task (those present in `task_of_example`) form a
    stream: pass e over task t is a permutation of t's examples, seeded from (seed, t, e), so
    within one pass every example of t is seen exactly once, and passes reshuffle. With a
    single task of weight 1 this is a plain shuffled epoch order, batch after batch.

    Task allocation. Smooth weighted round robin over the tasks present, with the registry
    weights made exact integers: each pick adds w_t to every task's credit, takes the task with
    the largest credit (ties -> first in sorted name order) and subtracts sum(w) from it. After
    n picks task t has been chosen n*w_t/sum(w) +- (bounded) times, so long-run proportions
    match the weights exactly, and the picks of one period are spread evenly.
    - "blend": one pick per slot of the global batch; the batch interleaves tasks in pick order,
      so every rank's contiguous slice is itself a blend.
    - "homogeneous": one pick per global batch; all its slots come from that task.
    A task with fewer examples than it is allocated in one batch wraps into its next pass
    within that batch (it then repeats examples in the batch; the loss masks such duplicates).

    Determinism contract. The global batch at step s is a pure function of (task_of_example,
    the weights of the tasks present, global_batch_size, seed, mode, s). It does not depend on
    dp_rank/dp_size (they only choose the slice: rank r gets positions
    [r*b, (r+1)*b) with b = global_batch_size/dp_size), on restarts, or on the machine
    (permutations use numpy's PCG64 Generator, whose streams numpy keeps stable across versions).
    `state_dict()` after k batches, loaded into a sampler built with the same arguments (dp
    size may differ), continues with batch k exactly as an uninterrupted run would.
    `state_dict()` counts batches this object has produced; a DataLoader that prefetches runs
    ahead of training, so checkpoint `state_dict_at(trainer_step)` instead.
    """

    def __init__(
        self,
        task_of_example: Sequence[str],
        registry: TaskRegistry,
        global_batch_size: int,
        dp_rank: int,
        dp_size: int,
        seed: int,
        mode: str,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if global_batch_size < 1 or dp_size < 1:
            raise ValueError(f"global_batch_size ({global_batch_size}) and dp_size ({dp_size}) must be >= 1")
        if global_batch_size % dp_size:
            raise ValueError(f"global_batch_size {global_batch_size} is not divisible by dp_size {dp_size}")
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} out of range for dp_size {dp_size}")
        if len(task_of_example) == 0:
            raise ValueError("task_of_example is empty: no examples to sample")

        members: Dict[str, List[int]] = {}
        for i, t in enumerate(task_of_example):
            members.setdefault(t, []).append(i)
        self.tasks: List[str] = sorted(members)
        for t in self.tasks:
            if t not in registry:
                try:
                    registry[t]
                except UnknownTaskError as e:
                    raise UnknownTaskError(f"{e} (task of example {members[t][0]})") from None
        self._members = [np.asarray(members[t], dtype=np.int64) for t in self.tasks]
        self._weights = _integer_weights([registry[t].weight for t in self.tasks])
        self._weight_sum = sum(self._weights)

        self.num_examples = len(task_of_example)
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // dp_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.seed, self.mode = seed, mode
        self._config = {
            "seed": seed,
            "global_batch_size": global_batch_size,
            "mode": mode,
            "num_examples": self.num_examples,
            "tasks": {t: [len(m), w] for t, m, w in zip(self.tasks, self._members, self._weights)},
            "task_of_example_hash": hashlib.blake2b(
                "\n".join(task_of_example).encode(), digest_size=16
            ).hexdigest(),
        }
        self._state = self._initial_state()
        self._perm_cache: Dict[Tuple[int, int], np.ndarray] = {}

    # --- state -------------------------------------------------------------------------------
    def _initial_state(self) -> dict:
        n = len(self.tasks)
        return {"step": 0, "credits": [0] * n, "cursors": [0] * n}

    @property
    def step(self) -> int:
        """Number of global batches produced so far."""
        return self._state["step"]

    def state_dict(self) -> dict:
        """Plain-Python state (JSON/torch.save friendly) after `self.step` global batches."""
        st = self._state
        return {
            "version": STATE_VERSION,
            "step": st["step"],
            "credits": dict(zip(self.tasks, st["credits"])),
            "cursors": dict(zip(self.tasks, st["cursors"])),
            "config": copy.deepcopy(self._config),
        }

    def state_dict_at(self, step: int) -> dict:
        """The state after `step` global batches, without changing this sampler."""
        other = copy.copy(self)
        other._state = self._replay_to(step)
        return GlobalBatchSampler.state_dict(other)

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"sampler state version {state.get('version')!r}, expected {STATE_VERSION}")
        diff = [k for k in self._config if state["config"].get(k) != self._config[k]]
        if diff:
            detail = "; ".join(
                f"{k}: saved {json.dumps(state['config'].get(k))[:200]} vs now "
                f"{json.dumps(self._config[k])[:200]}" for k in diff
            )
            raise ValueError(f"sampler state does not match this sampler ({detail})")
        self._state = {
            "step": int(state["step"]),
            "credits": [int(state["credits"][t]) for t in self.tasks],
            "cursors": [int(state["cursors"][t]) for t in self.tasks],
        }

    # --- batches -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[List[int]]:
        """Infinite iterator of this rank's local batches, continuing from `self.step`."""
        while True:
            yield self.next_batch()

    def next_batch(self) -> List[int]:
        return self._local(self.next_global_batch())

    def next_global_batch(self) -> List[int]:
        return self._advance(self._state)

    def global_batches(self, start_step: int, num_steps: int) -> List[List[int]]:
        """Global batches [start_step, start_step + num_steps); this sampler's state is unchanged."""
        state = self._replay_to(start_step)
        return [self._advance(state) for _ in range(num_steps)]

    def batches(self, start_step: int, num_steps: int) -> List[List[int]]:
        """This rank's local batches for steps [start_step, start_step + num_steps)."""
        return [self._local(g) for g in self.global_batches(start_step, num_steps)]

    def seen_counts(self, num_steps: int) -> np.ndarray:
        """[num_examples] int64: how often each example appears in global batches 0..num_steps-1."""
        counts = np.zeros(self.num_examples, dtype=np.int64)
        state = self._initial_state()
        for _ in range(num_steps):
            np.add.at(counts, np.asarray(self._advance(state), dtype=np.int64), 1)
        return counts

    def local_of(self, global_batch: List[int]) -> List[int]:
        """This rank's share of ``global_batch``."""
        return self._local(global_batch)

    def _local(self, global_batch: List[int]) -> List[int]:
        b = self.local_batch_size
        return global_batch[self.dp_rank * b : (self.dp_rank + 1) * b]

    def _replay_to(self, step: int) -> dict:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        start = self._state if self._state["step"] <= step else self._initial_state()
        state = copy.deepcopy(start)
        while state["step"] < step:
            self._advance(state)
        return state

    def _pick(self, credits: List[int]) -> int:
        """One smooth-weighted-round-robin pick; mutates `credits`."""
        best = 0
        for t, w in enumerate(self._weights):
            credits[t] += w
            if credits[t] > credits[best]:
                best = t
        credits[best] -= self._weight_sum
        return best

    def _advance(self, state: dict) -> List[int]:
        """Produce the next global batch from `state` (mutated in place)."""
        B = self.global_batch_size
        if self.mode == "homogeneous":
            slot_tasks = [self._pick(state["credits"])] * B
        else:
            slot_tasks = [self._pick(state["credits"]) for _ in range(B)]
        need = np.bincount(slot_tasks, minlength=len(self.tasks))
        drawn = {t: iter(self._take(t, int(n), state["cursors"])) for t, n in enumerate(need) if n}
        state["step"] += 1
        return [int(next(drawn[t])) for t in slot_tasks]

    def _take(self, t: int, count: int, cursors: List[int]) -> np.ndarray:
        """Next `count` indices of task t's stream (crossing passes as needed)."""
        n = len(self._members[t])
        out = []
        while count:
            epoch, offset = divmod(cursors[t], n)
            chunk = self._permutation(t, epoch)[offset : offset + count]
            out.append(chunk)
            cursors[t] += len(chunk)
            count -= len(chunk)
        return np.concatenate(out)

    def _permutation(self, t: int, epoch: int) -> np.ndarray:
        key = (t, epoch)
        if key not in self._perm_cache:
            if len(self._perm_cache) > 4 * len(self.tasks):  # keep memory bounded
                self._perm_cache.clear()
            rng = np.random.Generator(np.random.PCG64(_stable_seed(self.seed, self.tasks[t], epoch)))
            self._perm_cache[key] = self._members[t][rng.permutation(len(self._members[t]))]
        return self._perm_cache[key]
