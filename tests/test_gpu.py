"""GPU-only paths: Transformer Engine layer specs, NCCL. They skip with the reason on CPU machines."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from conftest import tiny_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_te = pytest.mark.skipif(importlib.util.find_spec("transformer_engine") is None,
                              reason="needs transformer-engine (NVIDIA's PyTorch container)")


@needs_cuda
@needs_te
def test_transformer_engine_spec_matches_hf_layout(tokenizer_file):
    """With TE + CUDA the backbone uses TE layer specs; its embeddings equal the CPU/local path's."""
    from nemo_nvembed.parallel import distributed
    from nemo_nvembed.models.nvembed import NVEmbedModel

    distributed.initialize(1)
    model = NVEmbedModel(tiny_config(tokenizer_file, **{"lora.target_modules": "[linear_proj,linear_fc2]"})).cuda().eval()
    assert model.backbone.uses_te
    texts = ["a GPU smoke test", "with two texts"]
    a = model.encode(texts, instruction="Find it")
    b = model.encode(texts[:1], instruction="Find it")
    torch.testing.assert_close(a[:1], b, rtol=1e-4, atol=1e-4)  # padding invariance under TE's padding mask
