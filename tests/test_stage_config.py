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


def test_head_lr_mult_puts_the_pooling_head_in_its_own_group(make_tiny):
    """train.optim.head_lr_mult: the head's parameters train at lr x mult through the whole schedule;
    at 1 (the default) the optimizer keeps one group; 0 is refused with the key named."""
    import torch

    from nemo_nvembed.models.config import ConfigError
    from nemo_nvembed.training.config import validate_stage_config
    from nemo_nvembed.training.optim import build_optimizer, param_groups

    model = make_tiny()
    cfg = validate_stage_config(compose("stage1", ["train.optim.lr=1e-3", "train.optim.warmup_steps=2",
                                                   "train.optim.head_lr_mult=10"])).train
    groups = param_groups(model, cfg.optim)
    head = {id(p) for p in model.pooler.parameters()}
    assert {id(p) for p in groups[1]["params"]} == head and not head & {id(p) for p in groups[0]["params"]}
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == sum(p.requires_grad for p in model.parameters())
    opt, sched = build_optimizer(groups, cfg.optim, max_steps=10)
    for _ in range(4):
        ratio = opt.param_groups[1]["lr"] / opt.param_groups[0]["lr"]
        assert ratio == pytest.approx(10.0) and opt.param_groups[0]["lr"] <= 1e-3
        opt.step()
        sched.step()
    one = validate_stage_config(compose("stage1", ["train.optim.lr=1e-3"])).train.optim
    assert all(isinstance(p, torch.Tensor) for p in param_groups(model, one))
    with pytest.raises(ConfigError, match="head_lr_mult"):
        validate_stage_config(compose("stage1", ["train.optim.head_lr_mult=0"]))


def test_lora_b_lr_mult_and_distill_settings(make_tiny):
    """train.optim.lora_b_lr_mult (LoRA+): every lora_B in a third group at lr x mult, nothing else there;
    train.distill's weight and temperature are checked with the key named."""
    from nemo_nvembed.models.config import ConfigError
    from nemo_nvembed.training.config import validate_stage_config
    from nemo_nvembed.training.optim import param_groups

    model = make_tiny()
    cfg = validate_stage_config(compose("stage1", ["train.optim.lr=1e-3", "train.optim.lora_b_lr_mult=4"])).train
    groups = param_groups(model, cfg.optim)
    lora_b = {id(p) for n, p in model.named_parameters() if n.endswith("lora_B")}
    assert lora_b and {id(p) for p in groups[2]["params"]} == lora_b and groups[2]["lr"] == pytest.approx(4e-3)
    assert groups[1]["lr"] == pytest.approx(1e-3) and not lora_b & {id(p) for g in groups[:2] for p in g["params"]}
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())
    for bad, key in (("train.optim.lora_b_lr_mult=0", "lora_b_lr_mult"), ("train.distill.weight=-1", "train.distill"),
                     ("train.distill.temperature=0", "train.distill")):
        with pytest.raises(ConfigError, match=key):
            validate_stage_config(compose("stage1", [bad]))
