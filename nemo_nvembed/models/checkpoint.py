"""``.nemo`` files that do not depend on the tensor-parallel size they were saved with.

One archive (NeMo's layout: ``model_config.yaml``, ``model_weights.ckpt`` and the tokenizer file as
an artifact, ``nemo:<name>``) written and read here for the network
(:class:`~nemo_nvembed.models.network.NVEmbedNetwork`); the NeMo model class that trains it
(:class:`nemo_nvembed.training.nemo_model.NVEmbedModel`) saves and restores through the same two
functions, so inference restores exactly what training wrote.

Weights are stored in the full (TP=1) layout (:mod:`tp_layout`), gathered from all TP ranks at
save time and re-split for the restoring process's TP size at load time, so a model trained with
TP=2 restores under TP=1 and TP=2 alike.

NeMo 3.0 refuses to instantiate a saved ``target`` outside its approved namespaces
(``UnsafeTargetError``). We never ask it to: the saved config carries no ``target``; the NeMo
class is recorded under ``nvembed_class`` and restoring checks that it is ours.

Integrity: the sha256 of the weights file is stored in the config (``nvembed_weights_sha256``) and
checked at restore before the weights are read, so a truncated or bit-flipped ``.nemo`` is refused
with its path and what is wrong (:class:`NemoFileError`), as is a file that is no ``.nemo`` at all.
Files saved before the checksum existed restore with a warning.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import zipfile

import torch
from nemo.core.connectors.save_restore_connector import SaveRestoreConnector
from nemo.utils import logging
from omegaconf import DictConfig, OmegaConf

from nemo_nvembed.checks.errors import UserError

FORMAT_VERSION = 1
CONFIG_MEMBER, WEIGHTS_MEMBER = "model_config.yaml", "model_weights.ckpt"
# The NeMo model class a .nemo holds (models/ cannot import training/, so by name; a test in
# tests/test_model.py checks it names the real class) and where it lived before.
NEMO_CLASS = "nemo_nvembed.training.nemo_model.NVEmbedModel"
LEGACY_CLASS_NAMES = ("nemo_nvembed.model.NVEmbedModel", "nemo_nvembed.models.nvembed.NVEmbedModel")

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


# ---------------------------------------------------------------- write


def save_nemo(cfg: DictConfig, tokenizer_file: str, full_state_dict: dict[str, torch.Tensor], save_path: str) -> None:
    """Write config, tokenizer artifact and full-layout weights; call on one rank only.

    Written next to the destination, then renamed: a crash mid-save never clobbers a finished file."""
    save_path = str(save_path)
    os.makedirs(os.path.dirname(os.path.abspath(save_path)), exist_ok=True)
    with tempfile.TemporaryDirectory() as tmpdir:
        weights = os.path.join(tmpdir, WEIGHTS_MEMBER)
        torch.save(full_state_dict, weights)
        artifact = os.path.basename(tokenizer_file)
        shutil.copyfile(tokenizer_file, os.path.join(tmpdir, artifact))
        conf = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        conf.tokenizer.file = f"nemo:{artifact}"
        conf.nvembed_class = NEMO_CLASS
        conf.nvembed_format = FORMAT_VERSION
        conf[WEIGHTS_SHA_KEY] = _sha256(weights)
        OmegaConf.save(conf, os.path.join(tmpdir, CONFIG_MEMBER))
        partial = f"{save_path}.partial"
        SaveRestoreConnector._make_nemo_file_from_folder(filename=partial, source_dir=tmpdir)
        os.replace(partial, save_path)


# ---------------------------------------------------------------- read


def _members(path: str) -> dict[str, tarfile.TarInfo]:
    if not os.path.isfile(path):
        raise NemoFileError(f"{path}: no such .nemo file" + (" (a directory)" if os.path.isdir(path) else ""))
    try:
        with SaveRestoreConnector._tar_open(path) as tar:
            return {os.path.normpath(m.name): m for m in tar.getmembers() if m.isfile()}
    except READ_ERRORS + (OSError,) as e:
        raise NemoFileError(f"{path}: not a readable .nemo archive ({type(e).__name__}: {e})") from None


def _extract(path: str, member: str, dest_dir: str, what: str) -> str:
    try:
        with SaveRestoreConnector._tar_open(path) as tar:
            info = next((m for m in tar.getmembers() if os.path.normpath(m.name) == member), None)
            if info is None:
                raise NemoFileError(f"{path}: {what} {member} is missing")
            target = os.path.join(dest_dir, os.path.basename(member))
            with tar.extractfile(info) as src, open(target, "wb") as f:
                shutil.copyfileobj(src, f)
    except READ_ERRORS as e:
        raise NemoFileError(f"{path}: damaged .nemo, its {what} cannot be read ({type(e).__name__}: {e})") from None
    return target


def read_config(path: str) -> DictConfig:
    """The saved model config of a ``.nemo`` (no weights read); refuses files that are not ours."""
    path = str(path)
    names = _members(path)
    for member in (CONFIG_MEMBER, WEIGHTS_MEMBER):
        if member not in names:
            raise NemoFileError(f"{path}: not a .nemo written by nemo_nvembed (no {member} inside)")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            conf = OmegaConf.load(_extract(path, CONFIG_MEMBER, tmp, "config"))
        except Exception as e:  # noqa: BLE001 - any parse failure of a damaged member
            raise NemoFileError(f"{path}: damaged .nemo, its config cannot be read ({type(e).__name__}: {e})") from None
    saved = conf.get("nvembed_class") if isinstance(conf, DictConfig) else None
    if saved is None or "target" in conf:
        raise NemoFileError(f"{path} was not written by nemo_nvembed (no 'nvembed_class' in its config)")
    if saved != NEMO_CLASS and saved not in LEGACY_CLASS_NAMES:
        raise NemoFileError(f"{path} holds a {saved}, not a {NEMO_CLASS}")
    return conf


def tokenizer_file(path: str, conf: DictConfig, dest_dir: str) -> str:
    """Extract the tokenizer artifact named by ``conf.tokenizer.file`` (``nemo:<name>``) into ``dest_dir``."""
    name = str(conf.tokenizer.file).removeprefix("nemo:")
    member = next((m for m in _members(str(path)) if os.path.basename(m) == name), None)
    if member is None:
        raise NemoFileError(f"{path}: tokenizer artifact {name} is missing")
    return _extract(str(path), member, dest_dir, "tokenizer")


def load_weights(path: str, conf: DictConfig) -> dict[str, torch.Tensor]:
    """The full-layout weights, after checking them against the checksum stored at save time."""
    path = str(path)
    with tempfile.TemporaryDirectory() as tmp:
        weights = _extract(path, WEIGHTS_MEMBER, tmp, "weights")
        expected = conf.get(WEIGHTS_SHA_KEY)
        if expected is None:
            logging.warning(f"{path}: saved without a weights checksum; not verified")
        elif _sha256(weights) != expected:
            raise NemoFileError(f"{path}: the weights do not match the checksum stored at save time "
                                f"(the file is corrupted); restore it from a good copy")
        try:
            return torch.load(weights, map_location="cpu", weights_only=True)
        except (RuntimeError,) + READ_ERRORS as e:
            raise NemoFileError(f"{path}: weights unreadable ({e})") from None


def tokenizer_from_nemo(path: str, conf):
    """The tokenizer of a ``.nemo`` without building the model or reading its weights (``conf`` is
    :func:`read_config`'s): training data is checked with it before any weight is restored."""
    from nemo_nvembed.models.text import load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        return load_tokenizer(conf.tokenizer, tokenizer_file(path, conf, tmp))
