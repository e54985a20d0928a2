"""The paper's Table 6 sample counts (conf/data/table6.yaml) against the recipe manifest and the task registry.

`differences` lists every place where conf/data/nvembed_v1.yaml or conf/tasks.yaml disagrees with
Table 6: a set's `samples`, a joint row's split or sum, a task's sampling weight (the count in
thousands), a Table 6 set missing from the manifest, a set that Table 6 does not list but that is
enabled or whose task weighs other than 1.0. tests/test_table6.py fails on any of them.
"""
from __future__ import annotations

from pathlib import Path

from nemo_nvembed.checks.errors import UserError
from nemo_nvembed.checks.schema import load_yaml


class Table6Error(UserError):
    """conf/data/table6.yaml is malformed; the message names the file and the key."""


def load_table6(path: str | Path) -> dict[str, int]:
    """task -> Table 6 count, joint rows resolved through their `split` (whose sum must be the figure)."""
    raw = load_yaml(Path(path), "Table 6 file", Table6Error)
    for key in ("source", "counts", "joint"):
        if key not in raw:
            raise Table6Error(f"{path}: no `{key}`")
    counts = {str(k): int(v) for k, v in raw["counts"].items()}
    for i, row in enumerate(raw["joint"]):
        split = {str(k): int(v) for k, v in row["split"].items()}
        if sorted(split) != sorted(row["tasks"]) or sum(split.values()) != int(row["samples"]):
            raise Table6Error(f"{path}: joint[{i}]: split {split} must name exactly {list(row['tasks'])} "
                              f"and sum to {row['samples']}")
        counts.update(split)
    return counts


def differences(table6: dict[str, int], manifest, registry) -> list[str]:
    """Disagreements of a raw manifest (OmegaConf/dict) and a TaskRegistry with Table 6; [] when none."""
    out = []
    seen: dict[str, int] = {}
    for stage in ("stage1", "stage2"):
        for s in manifest[stage]:
            enabled = s.get("enabled", True)
            if s.task in table6:
                seen[s.task] = seen.get(s.task, 0)
                if s.samples != table6[s.task]:
                    out.append(f"{stage} {s.name}: samples {s.samples}, Table 6 {table6[s.task]} ({s.task})")
            elif enabled:
                out.append(f"{stage} {s.name}: {s.task} is not in Table 6 but enabled")
            elif s.task in registry and registry[s.task].weight != 1.0:
                out.append(f"{registry.source}: {s.task}.weight {registry[s.task].weight:g}: not in Table 6, "
                           "so 1.0 like every unlisted task")
    for task, n in table6.items():
        if task not in seen:
            out.append(f"{task}: in Table 6 ({n}) but no manifest set")
        if task not in registry:
            out.append(f"{task}: in Table 6 but not in {registry.source}")
        elif abs(registry[task].weight - n / 1000) > 1e-9:
            out.append(f"{registry.source}: {task}.weight {registry[task].weight:g}, Table 6 {n} -> {n / 1000:g}")
    return out
