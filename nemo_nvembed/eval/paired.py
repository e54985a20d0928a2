"""Paired comparison of two retrieval runs on the same queries: per-query metric values (``ir_measures``),
the mean difference, its bootstrap 95% confidence interval and a paired t-test (``scipy.stats``).

A difference between two models' nDCG@10 on a held-out set of ~150 queries is only a finding when the
interval excludes 0: both models answer the same queries, so the per-query differences are what vary.
A query of the qrels that a run does not answer counts 0 for that run (as an empty ranking scores).
"""
from __future__ import annotations

import re

import ir_measures
import numpy as np
from scipy import stats


def per_query(qrels: dict[str, dict[str, float]], run: dict[str, dict[str, float]], measure) -> dict[str, float]:
    """{query id: value} for every query of ``qrels`` (0 where the run has no ranking for it)."""
    values = {qid: 0.0 for qid in qrels}
    for m in ir_measures.iter_calc([measure], qrels, run):
        values[m.query_id] = float(m.value)
    return values


def paired_comparison(qrels, run_a, run_b, measure_name: str = "nDCG@10", resamples: int = 10000,
                      seed: int = 0) -> dict:
    """Run A against run B on ``measure_name`` (``ir_measures`` syntax): means, B - A with its percentile
    bootstrap 95% CI over queries, the paired t-test's two-sided p, and per-query wins / ties / losses of B."""
    measure = ir_measures.parse_measure(measure_name)
    a, b = per_query(qrels, run_a, measure), per_query(qrels, run_b, measure)
    qids = sorted(qrels)
    va, vb = np.array([a[q] for q in qids]), np.array([b[q] for q in qids])
    diff = vb - va
    if len(qids) < 2 or not diff.any():
        low = high = float(diff.mean()) if len(qids) else 0.0
        p = 1.0
    else:
        boot = stats.bootstrap((diff,), np.mean, confidence_level=0.95, n_resamples=resamples,
                               method="percentile", rng=np.random.default_rng(seed))
        low, high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
        p = float(stats.ttest_rel(vb, va).pvalue)
    return {"measure": measure_name, "queries": len(qids), "a": float(va.mean()), "b": float(vb.mean()),
            "b_minus_a": float(diff.mean()), "ci95": [low, high], "paired_t_p": p,
            "b_wins": int((diff > 0).sum()), "ties": int((diff == 0).sum()), "b_losses": int((diff < 0).sum())}


def group_of(pattern: str, query_ids) -> dict[str, str]:
    """{query id: its group}: the first capture group of ``pattern`` searched in the id (the whole match
    when the pattern has no group); ids it does not match are grouped under "(no match)"."""
    rx = re.compile(pattern)
    out = {}
    for qid in query_ids:
        m = rx.search(qid)
        out[qid] = "(no match)" if m is None else (m.group(1) if rx.groups else m.group(0))
    return out


def paired_by_group(qrels, run_a, run_b, pattern: str, measure_name: str = "nDCG@10", resamples: int = 10000,
                    seed: int = 0) -> dict[str, dict]:
    """:func:`paired_comparison` within each group of queries (:func:`group_of`), groups sorted by name:
    where a difference between two models comes from (e.g. man-page sections: ``--group '\\.(\\w+)$'``)."""
    groups = group_of(pattern, qrels)
    return {g: paired_comparison({q: r for q, r in qrels.items() if groups[q] == g}, run_a, run_b, measure_name,
                                 resamples, seed)
            for g in sorted(set(groups.values()))}
