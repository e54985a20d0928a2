"""Subsampling a set to its Table 6 count: uniform, or stratified over labels (section 4.2)."""
from __future__ import annotations

import random
from collections import defaultdict
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


def uniform(items: Sequence[T], n: int, rng: random.Random) -> list[T]:
    """At most n items, chosen uniformly without replacement, in input order."""
    if len(items) <= n:
        return list(items)
    keep = sorted(rng.sample(range(len(items)), n))
    return [items[i] for i in keep]


def stratified(items: Sequence[T], n: int, label: Callable[[T], str], rng: random.Random) -> list[T]:
    """At most n items keeping each label's share (largest remainder); input order kept.

    Every label present keeps at least one item when n >= the number of labels, so a rare label
    is not lost to rounding."""
    if len(items) <= n:
        return list(items)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        groups[label(it)].append(i)
    total = len(items)
    quota = {g: n * len(ix) / total for g, ix in groups.items()}
    alloc = {g: int(q) for g, q in quota.items()}
    if n >= len(groups):
        for g in alloc:
            alloc[g] = max(alloc[g], 1)
    left = n - sum(alloc.values())
    for g in sorted(groups, key=lambda g: (-(quota[g] - int(quota[g])), g)):
        if left <= 0:
            break
        if alloc[g] < len(groups[g]):
            alloc[g] += 1
            left -= 1
    while sum(alloc.values()) > n:  # the minimum of 1 overshot: take back from the largest
        g = max(alloc, key=lambda g: (alloc[g], g))
        alloc[g] -= 1
    keep = sorted(i for g, ix in groups.items() for i in rng.sample(ix, min(alloc[g], len(ix))))
    return [items[i] for i in keep]
