"""Task sampling weights: Table 6 counts in conf/tasks.yaml, `weights_from`, Hydra overrides."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from nemo_nvembed.data.tasks import TaskConfigError, TaskRegistry
from nemo_nvembed.data.weights import sampling_registry

REPO = Path(__file__).resolve().parents[1]


def _data_cfg(**kw):
    return OmegaConf.create({"weights_from": "registry", "task_weights": {}, **kw})


def test_registry_weights_are_the_manifest_counts():
    """Per example, every set is drawn about equally often (tests/test_table6.py ties both to Table 6)."""
    reg = TaskRegistry.from_yaml(REPO / "conf/tasks.yaml")
    manifest = OmegaConf.load(REPO / "conf/data/nvembed_v1.yaml")
    for stage in ("stage1", "stage2"):
        for s in manifest[stage]:
            if s.get("enabled", True):
                assert reg[s.task].weight == pytest.approx(s.samples / 1000), s.name
    assert reg["MSMARCO"].weight / reg["BioASQ"].weight == pytest.approx(200 / 2)
    assert "CQADupstack" in reg  # MTEB spelling (CQADupstackRetrieval)


def test_weights_from_examples_and_overrides():
    reg = TaskRegistry.from_yaml(REPO / "conf/tasks.yaml")
    out = sampling_registry(reg, {"NQ": 30, "BioASQ": 3}, _data_cfg(weights_from="examples"))
    assert (out["NQ"].weight, out["BioASQ"].weight) == (30.0, 3.0)
    out = sampling_registry(reg, {}, _data_cfg(task_weights={"MSMARCO": 250}))
    assert out["MSMARCO"].weight == 250.0 and out["NQ"].weight == reg["NQ"].weight
    with pytest.raises(TaskConfigError, match=r"train.data.task_weights: unknown task 'MSMARC'.*'MSMARCO'"):
        sampling_registry(reg, {}, _data_cfg(task_weights={"MSMARC": 1}))
    with pytest.raises(TaskConfigError, match=r"task_weights.NQ: weight must be finite and > 0"):
        sampling_registry(reg, {}, _data_cfg(task_weights={"NQ": 0}))


def test_task_weights_override_from_hydra():
    from hydra import compose, initialize_config_dir

    from nemo_nvembed.training.config import validate_train_config

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose(config_name="stage2", overrides=[
            "train.data.path=x.jsonl", "train.data.tasks=conf/tasks.yaml",
            "+train.data.task_weights.MSMARCO=250", "+train.data.task_weights.NQ=50",
            "train.data.weights_from=examples"])
    tcfg = validate_train_config(cfg.train)
    assert dict(tcfg.data.task_weights) == {"MSMARCO": 250.0, "NQ": 50.0}
    assert tcfg.data.weights_from == "examples"
