"""``python -m nemo_nvembed.train --config-name stage1 [overrides]``: one NV-Embed training stage.

Hydra composes ``conf/<config-name>.yaml`` with the overrides; :func:`nemo_nvembed.training.stage.run`
validates it against the stage schema and runs the stage.

Relaunching the same command resumes from the newest verified checkpoint; once the stage's ``.nemo`` exists,
relaunching is a no-op.
"""
from __future__ import annotations


def run(cfg):
    """Hydra's task function (it lives here so Hydra names the job ``train`` and finds ``../conf``)."""
    from nemo_nvembed.training import stage

    return stage.run(cfg)


def main() -> None:
    from nemo.core.config import hydra_runner

    from nemo_nvembed.checks.errors import exit_on_user_error

    hydra_runner(config_path="../conf", config_name="stage1")(exit_on_user_error(run))()


if __name__ == "__main__":
    main()
