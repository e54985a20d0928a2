"""The one stage-config schema (nemo_nvembed.training.config.StageConfig): every YAML composes and
validates; a misspelled key anywhere fails naming it, before any weight or data is read."""
from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

OVERRIDES = ["train.data.path=x.jsonl", "train.data.tasks=conf/tasks.yaml"]


def compose(name: str, overrides=()):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return hydra_compose(config_name=name, overrides=[*OVERRIDES, *overrides])


@pytest.mark.parametrize("name", ["stage1", "stage2"])
def test_stage_yaml_validates_with_launcher_values(name):
    from nemo_nvembed.training.config import validate_stage_config

    cfg = validate_stage_config(compose(name, ["model=tiny"]))
    assert (cfg.trainer.devices, cfg.trainer.num_nodes) == (1, 1)  # no launcher: a world of one
    assert cfg.parallel.tensor_model_parallel_size == 1 and cfg.model.seed == cfg.train.data.seed == 1234


def test_demo_overrides_validate():
    from omegaconf import OmegaConf

    from nemo_nvembed.training.config import validate_stage_config

    demo = OmegaConf.load(REPO / "conf" / "demo.yaml")
    for stage in ("stage1", "stage2"):
        overrides = [o.format(out="demo_out") for o in [*demo.common, *demo[stage]]]
        cfg = validate_stage_config(compose(stage, overrides))
        wanted = OmegaConf.from_dotlist([o for o in demo[stage] if o.startswith("trainer.max_steps=")]).trainer.max_steps
        assert cfg.trainer.max_steps == wanted  # the demo's own value, not the stage default


@pytest.mark.parametrize("override,key", [
    ("+trainer.max_stepz=5", "max_stepz"),
    ("+train.optim.lrr=1e-4", "lrr"),
    ("+exp_manager.checkpoint_callback_params.every_n_step=5", "every_n_step"),
    ("+model.pooling.num_latent=8", "num_latent"),
    ("+paralel.tensor_model_parallel_size=2", "paralel"),
])
def test_misspelled_key_is_named(override, key):
    from nemo_nvembed.models.config import ConfigError
    from nemo_nvembed.training.config import validate_stage_config

    with pytest.raises(ConfigError, match=key):
        validate_stage_config(compose("stage1", [override]))


def test_train_command_refuses_a_misspelled_key_before_loading(tmp_path):
    """init_from does not exist: the schema error must come first."""
    p = subprocess.run([sys.executable, "-m", "nemo_nvembed.train", "--config-name", "stage1", f"run_root={tmp_path}",
                        "train.data.path=x.jsonl", "+trainer.max_stepz=5"], capture_output=True, text=True, cwd=REPO,
                       timeout=300)
    assert p.returncode != 0 and "max_stepz" in p.stdout + p.stderr
    assert "init_from" not in p.stdout + p.stderr


def test_init_from_saved_before_new_model_keys_matches_their_defaults(tokenizer_file):
    """A .nemo whose config predates ``pool_span`` and ``lora.first_layer`` matches a config with their
    defaults; a real difference is named with both values."""
    from conftest import tiny_config

    from nemo_nvembed.models.config import ConfigError, validate_model_config
    from nemo_nvembed.training.stage import check_architecture

    wanted = validate_model_config(tiny_config(tokenizer_file))
    saved = tiny_config(tokenizer_file)
    del saved["pool_span"], saved.lora["first_layer"]
    check_architecture(saved, wanted, "old.nemo")
    saved.lora.rank = wanted.lora.rank + 1
    with pytest.raises(ConfigError, match=rf"model.lora.rank: old.nemo has {wanted.lora.rank + 1}, the config says"):
        check_architecture(saved, wanted, "old.nemo")
