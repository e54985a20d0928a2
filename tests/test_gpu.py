"""GPU-only paths: CUDA vs the CPU path, bf16 on GPU, Transformer Engine layer specs. They skip with the reason on CPU machines."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, tiny_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_te = pytest.mark.skipif(importlib.util.find_spec("transformer_engine") is None,
                              reason="needs transformer-engine (NVIDIA's PyTorch container)")


@needs_cuda
@needs_te
def test_transformer_engine_spec_matches_hf_layout(tokenizer_file):
    """With TE + CUDA the backbone uses TE layer specs; its embeddings equal the CPU/local path's."""
    from nemo_nvembed.parallel import distributed
    from nemo_nvembed.models.network import NVEmbedNetwork

    distributed.initialize(1)
    model = NVEmbedNetwork(tiny_config(tokenizer_file, **{"lora.target_modules": "[linear_proj,linear_fc2]"})).cuda().eval()
    assert model.backbone.uses_te
    texts = ["a GPU smoke test", "with two texts"]
    a = model.encode(texts, instruction="Find it")
    b = model.encode(texts[:1], instruction="Find it")
    torch.testing.assert_close(a[:1], b, rtol=1e-4, atol=1e-4)  # padding invariance under TE's padding mask



TEXTS = ["a GPU smoke test", "with two texts of different lengths, so the batch is padded"]


@needs_cuda
def test_cuda_embeddings_match_the_cpu_path(make_tiny, tmp_path):
    """Weights built on the GPU, saved, restored on CPU in another process (CUDA hidden: the CPU path):
    fp32 embeddings agree; padding invariance holds on CUDA."""
    model = make_tiny().eval()
    gpu = model.encode(TEXTS, instruction="Find it").cpu()
    torch.testing.assert_close(model.encode(TEXTS[:1], instruction="Find it").cpu(), gpu[:1], rtol=1e-3, atol=1e-4)
    path, npy = tmp_path / "tiny.nemo", tmp_path / "cpu.npy"
    model.save_to(str(path))
    script = ("import numpy as np\nfrom nemo_nvembed.models.network import NVEmbedNetwork\n"
              f"m = NVEmbedNetwork.load({str(path)!r}, tp=1)\n"
              f"np.save({str(npy)!r}, m.encode({TEXTS!r}, instruction='Find it').numpy())\n")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    torch.testing.assert_close(gpu, torch.from_numpy(np.load(npy)), rtol=1e-3, atol=1e-4)


@needs_cuda
def test_cuda_bf16_close_to_fp32(make_tiny):
    """bf16 autocast on the GPU (training and `encode --precision bf16`) stays close to fp32."""
    model = make_tiny().eval()
    fp32 = model.encode(TEXTS, instruction="Find it")
    bf16 = model.encode(TEXTS, instruction="Find it", precision="bf16")
    cos = torch.nn.functional.cosine_similarity(fp32.float(), bf16.float(), dim=-1)
    assert cos.min() > 0.99, cos


@needs_cuda
@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_packed_varlen_attention_equals_padded_on_cuda(tokenizer_file, single_process, attention):
    """On CUDA a pack runs variable-length flash attention (torch.nn.attention.varlen, bf16): its
    embeddings and gradients agree with the padded forward (SDPA with a padding mask)."""
    from conftest import model_with_random_lora

    from nemo_nvembed.models import keyed_dropout
    from nemo_nvembed.models.packing import Pack

    net, _ = model_with_random_lora(tokenizer_file, seed=3, **{"attention": attention, "lora.dropout": 0.1})
    net = net.cuda().train()
    b = net.text(TEXTS + ["short"], instruction="Find it")
    keys = torch.tensor([11, 22, 33])
    pack = Pack.from_padded(b.input_ids, b.attention_mask, b.pool_mask).to(torch.device("cuda"))
    outs = []
    for packed in (False, True):
        net.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if packed:
                with keyed_dropout.sequence_keys(keys, pack.segments, pack.positions):
                    e = net.forward_packed(pack)
            else:
                with keyed_dropout.sequence_keys(keys):
                    e = net(b.input_ids.cuda(), b.attention_mask.cuda(), b.pool_mask.cuda())
        e.float().sum().backward()
        outs.append((e.float().detach().cpu(), net.pooler.head.latents.grad.float().cpu()))
    cos = torch.nn.functional.cosine_similarity(outs[0][0], outs[1][0], dim=-1)
    assert cos.min() > 0.999, cos
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=5e-2, atol=5e-3)
