"""``.nemo`` files that do not depend on the tensor-parallel size they were saved with.

Weights are stored in the full (TP=1) layout (:mod:`tp_layout`), gathered from all TP ranks at
save time and re-split for the restoring process's TP size at load time, so a model trained with
TP=2 restores under TP=1 and TP=2 alike.

NeMo 3.0 refuses to instantiate a saved ``target`` outside its approved namespaces
(``UnsafeTargetError``) and falls back to the calling class when the config has none. We rely on
that deliberately: the saved config carries no ``target``, the class is recorded under
``nvembed_class`` instead, and restoring checks that it names the class asked to restore.
"""
from __future__ import annotations

import os
import tempfile

import torch
from nemo.core.connectors.save_restore_connector import SaveRestoreConnector
from omegaconf import OmegaConf

FORMAT_VERSION = 1
# Where the model class lived before the package split: files saved then name it so.
LEGACY_CLASS_NAMES = {"nemo_nvembed.model.NVEmbedModel": "nemo_nvembed.models.nvembed.NVEmbedModel"}


class TPAgnosticConnector(SaveRestoreConnector):
    def save_full(self, model, full_state_dict: dict[str, torch.Tensor], save_path: str) -> None:
        """Write config, artifacts and full-layout weights; call on one rank only."""
        os.makedirs(os.path.dirname(os.path.abspath(save_path)), exist_ok=True)
        with tempfile.TemporaryDirectory() as tmpdir:
            config_yaml = os.path.join(tmpdir, self.model_config_yaml)
            model.to_config_file(path2yaml_file=config_yaml)
            if model.has_native_or_submodules_artifacts():
                self._handle_artifacts(model, nemo_file_folder=tmpdir)
                self._update_artifact_paths(model, path2yaml_file=config_yaml)
            conf = OmegaConf.load(config_yaml)
            conf.pop("target", None)
            conf.nvembed_class = f"{type(model).__module__}.{type(model).__qualname__}"
            conf.nvembed_format = FORMAT_VERSION
            OmegaConf.save(conf, config_yaml)
            self._save_state_dict_to_disk(full_state_dict, os.path.join(tmpdir, self.model_weights_ckpt))
            # Write next to the destination, then rename: a crash mid-save never clobbers a
            # finished file at save_path.
            partial = f"{save_path}.partial"
            self._make_nemo_file_from_folder(filename=partial, source_dir=tmpdir)
            os.replace(partial, save_path)

    def load_config_and_state_dict(self, calling_cls, restore_path, *args, **kwargs):
        if not os.path.isfile(restore_path):
            raise FileNotFoundError(f"no .nemo file at {restore_path}")
        conf = super().load_config_and_state_dict(calling_cls, restore_path, None, None, True, True)
        expected = f"{calling_cls.__module__}.{calling_cls.__qualname__}"
        saved = conf.get("nvembed_class")
        saved = LEGACY_CLASS_NAMES.get(saved, saved)
        if saved is None or "target" in conf:
            raise ValueError(f"{restore_path} was not written by nemo_nvembed (no 'nvembed_class' in its config)")
        if saved != expected:
            raise ValueError(f"{restore_path} holds a {saved}, not a {expected}")
        return super().load_config_and_state_dict(calling_cls, restore_path, *args, **kwargs)

    def modify_state_dict(self, conf, state_dict):
        return state_dict

    def load_instance_with_state_dict(self, instance, state_dict, strict):
        instance.load_full_state_dict(state_dict, source="the .nemo weights")
        instance._set_model_restore_state(is_being_restored=False)
