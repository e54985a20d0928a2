"""``.nemo`` files that do not depend on the tensor-parallel size they were saved with.

Weights are stored in the full (TP=1) layout (:mod:`tp_layout`), gathered from all TP ranks at
save time and re-split for the restoring process's TP size at load time, so a model trained with
TP=2 restores under TP=1 and TP=2 alike.

NeMo 3.0 refuses to instantiate a saved ``target`` outside its approved namespaces
(``UnsafeTargetError``) and falls back to the calling class when the config has none. We rely on
that deliberately: the saved config carries no ``target``, the class is recorded under
``nvembed_class`` instead, and restoring checks that it names the class asked to restore.

Integrity: the sha256 of the weights file is stored in the config (``nvembed_weights_sha256``) and
checked at restore before the weights are read, so a truncated or bit-flipped ``.nemo`` is refused
with its path and what is wrong (:class:`NemoFileError`), as is a file that is no ``.nemo`` at all.
Files saved before the checksum existed restore with a warning.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import tempfile
import zipfile

import torch
from nemo.core.connectors.save_restore_connector import SaveRestoreConnector
from omegaconf import OmegaConf

from nemo_nvembed.checks.errors import UserError

FORMAT_VERSION = 1
# Where the model class lived before the package split: files saved then name it so.
LEGACY_CLASS_NAMES = {"nemo_nvembed.model.NVEmbedModel": "nemo_nvembed.models.nvembed.NVEmbedModel"}


WEIGHTS_SHA_KEY = "nvembed_weights_sha256"
READ_ERRORS = (tarfile.TarError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, UnicodeDecodeError)


class NemoFileError(UserError):
    """A .nemo that cannot be used: not an archive, truncated, corrupted, or not ours."""


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


class TPAgnosticConnector(SaveRestoreConnector):
    def save_full(self, model, full_state_dict: dict[str, torch.Tensor], save_path: str) -> None:
        """Write config, artifacts and full-layout weights; call on one rank only."""
        os.makedirs(os.path.dirname(os.path.abspath(save_path)), exist_ok=True)
        with tempfile.TemporaryDirectory() as tmpdir:
            weights = os.path.join(tmpdir, self.model_weights_ckpt)
            self._save_state_dict_to_disk(full_state_dict, weights)
            config_yaml = os.path.join(tmpdir, self.model_config_yaml)
            model.to_config_file(path2yaml_file=config_yaml)
            if model.has_native_or_submodules_artifacts():
                self._handle_artifacts(model, nemo_file_folder=tmpdir)
                self._update_artifact_paths(model, path2yaml_file=config_yaml)
            conf = OmegaConf.load(config_yaml)
            conf.pop("target", None)
            conf.nvembed_class = f"{type(model).__module__}.{type(model).__qualname__}"
            conf.nvembed_format = FORMAT_VERSION
            conf[WEIGHTS_SHA_KEY] = _sha256(weights)
            OmegaConf.save(conf, config_yaml)
            # Write next to the destination, then rename: a crash mid-save never clobbers a
            # finished file at save_path.
            partial = f"{save_path}.partial"
            self._make_nemo_file_from_folder(filename=partial, source_dir=tmpdir)
            os.replace(partial, save_path)

    def load_config_and_state_dict(self, calling_cls, restore_path, *args, **kwargs):
        if not os.path.isfile(restore_path):
            raise NemoFileError(f"{restore_path}: no such .nemo file" + (" (a directory)" if os.path.isdir(restore_path) else ""))
        try:
            with tarfile.open(restore_path) as tar:
                names = {os.path.normpath(n) for n in tar.getnames()}
        except READ_ERRORS + (OSError,) as e:
            raise NemoFileError(f"{restore_path}: not a readable .nemo archive ({type(e).__name__}: {e})") from None
        for member in (self.model_config_yaml, self.model_weights_ckpt):
            if member not in names:
                raise NemoFileError(f"{restore_path}: not a .nemo written by nemo_nvembed (no {member} inside)")
        try:
            conf = super().load_config_and_state_dict(calling_cls, restore_path, None, None, True, True)
        except READ_ERRORS as e:
            raise NemoFileError(f"{restore_path}: damaged .nemo, its config cannot be read ({type(e).__name__}: {e})") from None
        expected = f"{calling_cls.__module__}.{calling_cls.__qualname__}"
        saved = conf.get("nvembed_class")
        saved = LEGACY_CLASS_NAMES.get(saved, saved)
        if saved is None or "target" in conf:
            raise NemoFileError(f"{restore_path} was not written by nemo_nvembed (no 'nvembed_class' in its config)")
        if saved != expected:
            raise NemoFileError(f"{restore_path} holds a {saved}, not a {expected}")
        self._restoring, self._expected_sha = restore_path, conf.get(WEIGHTS_SHA_KEY)
        try:
            return super().load_config_and_state_dict(calling_cls, restore_path, *args, **kwargs)
        except READ_ERRORS as e:
            raise NemoFileError(f"{restore_path}: damaged .nemo, its weights cannot be read ({type(e).__name__}: {e})") from None

    def _load_state_dict_from_disk(self, model_weights, map_location=None):
        expected = getattr(self, "_expected_sha", None)
        if expected is None:
            from nemo.utils import logging

            logging.warning(f"{getattr(self, '_restoring', model_weights)}: saved without a weights checksum; not verified")
        elif _sha256(model_weights) != expected:
            raise NemoFileError(f"{self._restoring}: the weights do not match the checksum stored at save time "
                                f"(the file is corrupted); restore it from a good copy")
        try:
            return super()._load_state_dict_from_disk(model_weights, map_location=map_location)
        except (RuntimeError,) + READ_ERRORS as e:
            raise NemoFileError(f"{getattr(self, '_restoring', model_weights)}: weights unreadable ({e})") from None

    def modify_state_dict(self, conf, state_dict):
        return state_dict

    def load_instance_with_state_dict(self, instance, state_dict, strict):
        instance.load_full_state_dict(state_dict, source="the .nemo weights")
        instance._set_model_restore_state(is_being_restored=False)


def tokenizer_from_nemo(path: str, conf):
    """The tokenizer of a ``.nemo`` without building the model or reading its weights (``conf`` is
    its config from ``restore_from(..., return_config=True)``): training data is checked with it
    before any weight is restored."""
    from nemo_nvembed.models.text import load_tokenizer

    name = str(conf.tokenizer.file).removeprefix("nemo:")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with tarfile.open(path) as tar:
                member = next((m for m in tar.getmembers() if os.path.basename(m.name) == name), None)
                if member is None:
                    raise NemoFileError(f"{path}: tokenizer artifact {name} is missing")
                src = tar.extractfile(member)
                target = os.path.join(tmp, name)
                with open(target, "wb") as f:
                    f.write(src.read())
        except READ_ERRORS as e:
            raise NemoFileError(f"{path}: damaged .nemo, its tokenizer cannot be read ({type(e).__name__}: {e})") from None
        return load_tokenizer(conf.tokenizer, target)
