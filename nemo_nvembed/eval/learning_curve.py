"""Held-out nDCG@10 against training step, read back from a stage's TensorBoard events and drawn.

:class:`nemo_nvembed.training.callbacks.RetrievalValidation` logs ``val_ndcg@10`` and
``val_recall@100`` every ``train.validation.every_n_steps`` steps and at the end of a stage. A
resumed stage appends events to new files in the same folder; for a step logged twice the later
value wins. Stages are drawn one after the other on one step axis (stage 2's step 0 follows stage 1's
last step), with horizontal lines for baselines (e.g. BM25 and the base model).
"""
from __future__ import annotations

from pathlib import Path

NDCG, RECALL = "val_ndcg@10", "val_recall@100"


def read_validation(run_dir: str | Path) -> list[tuple[int, float, float]]:
    """[(step, nDCG@10, Recall@100)] logged under ``run_dir`` (any depth), sorted by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ndcg, recall = {}, {}
    files = sorted(Path(run_dir).rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        for tag, into in ((NDCG, ndcg), (RECALL, recall)):
            if tag in tags:
                into.update({e.step: e.value for e in acc.Scalars(tag)})
    return [(s, ndcg[s], recall.get(s, float("nan"))) for s in sorted(ndcg)]


def plot(stages: list[tuple[str, list[tuple[int, float, float]]]], start: tuple[str, float] | None,
         baselines: dict[str, float], path: str | Path, title: str) -> Path:
    """PNG of nDCG@10 per stage on a shared step axis; ``start`` = (label, value) drawn at step 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    offset, last = 0, start and (0, start[1])
    if start:
        ax.plot([0], [start[1]], "ko", label=start[0])
    for name, points in stages:
        xs = [offset + s for s, _, _ in points]
        ys = [v for _, v, _ in points]
        (line,) = ax.plot(xs, ys, "o-", label=name, zorder=3)
        if last and points:  # join to where the previous stage (or the base model) ended, no marker
            ax.plot([last[0], xs[0]], [last[1], ys[0]], "-", color=line.get_color(), zorder=2)
        if points:
            offset = offset + points[-1][0]
            last = (offset, points[-1][1])
    for (name, value), style in zip(baselines.items(), ("--", ":", "-.")):
        ax.axhline(value, color="gray", linestyle=style, label=name)
    ax.set_xlabel("optimizer step (stages one after the other)")
    ax.set_ylabel("held-out nDCG@10")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
