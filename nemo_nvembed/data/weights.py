"""Task sampling weights for a training run: the registry's, or the examples present, plus overrides.

NV-Embed gives no blend weights, only the sample count of each training set (Table 6). Two ways
to follow it, chosen by ``train.data.weights_from``:

* ``registry``: conf/tasks.yaml's weights, which are Table 6's counts (in thousands);
* ``examples``: each task weighted by its number of examples in the training file, i.e. every
  example drawn about equally often, whatever subsample `nemo_nvembed.prepare` wrote.

``train.data.task_weights`` then overrides single tasks (``{MSMARCO: 250}``), in the same unit
as the weights it replaces.
"""
from __future__ import annotations

from typing import Mapping

from nemo_nvembed.data.tasks import TaskRegistry


def sampling_registry(registry: TaskRegistry, examples_per_task: Mapping[str, int], data_cfg) -> TaskRegistry:
    """`registry` with the weights the sampler must use (rules in the module docstring)."""
    if data_cfg.weights_from == "examples":
        registry = registry.with_weights(dict(examples_per_task), source="train.data.weights_from=examples")
    elif data_cfg.weights_from != "registry":
        raise ValueError(f"train.data.weights_from: {data_cfg.weights_from!r} is not 'registry' or 'examples'")
    if data_cfg.task_weights:
        registry = registry.with_weights(dict(data_cfg.task_weights), source="train.data.task_weights")
    return registry
