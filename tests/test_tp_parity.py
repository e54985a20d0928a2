"""TP=2 (two real gloo processes) equals TP=1 (this process) on a tiny random model, fp32.

For every pooling type: final hidden states, pooled embeddings, and the gradients of every
trainable parameter (LoRA and head), gathered to the full layout. Also: a .nemo saved under
TP=2 restores under TP=2 (there) and TP=1 (here) with equal embeddings.
"""
from __future__ import annotations

import torch

from conftest import tiny_config
from dist_utils import run_distributed

POOLINGS = ["latent_attention", "mean", "eos", "self_attention"]


def make_inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49152, (3, 10), generator=g)
    att = torch.ones(3, 10, dtype=torch.long)
    att[1, 6:] = 0
    att[2, 4:] = 0
    pool = att.clone()
    pool[:, :2] = 0  # an "instruction prefix" that is attended to but not pooled
    probe = torch.randn(64, generator=g)
    return ids, att, pool, probe


def run_model(model, ids, att, pool, probe):
    """Hidden states, pooled output, and full-layout gradients of a scalar function of it."""
    from nemo_nvembed.parallel import tp_layout
    from nemo_nvembed.models.backbone import attention_mask

    model.zero_grad(set_to_none=True)
    pos = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
    hidden = model.backbone(ids, pos, attention_mask(att, model.cfg.attention)).transpose(0, 1)
    pooled = model(ids, att, pool)
    (pooled @ probe).square().sum().backward()
    return hidden.detach(), pooled.detach(), tp_layout.full_grads(model)


def reference_model(tokenizer_file, pooling):
    from nemo_nvembed.models.network import NVEmbedNetwork

    model = NVEmbedNetwork(tiny_config(tokenizer_file, **{"pooling.type": pooling, "lora.dropout": 0.0}))
    full = model.full_state_dict()
    g = torch.Generator().manual_seed(1)
    for name in full:  # non-zero LoRA B, so A's gradients are non-trivial too
        if name.endswith("lora_B"):
            full[name] = 0.05 * torch.randn(full[name].shape, generator=g)
    model.load_full_state_dict(full)
    return model, full


def _tp2_worker(rank, world, tokenizer_file, states):
    from nemo_nvembed.parallel import distributed
    from nemo_nvembed.models.network import NVEmbedNetwork

    distributed.initialize(2)
    out = {}
    for pooling, full in states.items():
        model = NVEmbedNetwork(tiny_config(tokenizer_file, **{"pooling.type": pooling, "lora.dropout": 0.0}))
        model.load_full_state_dict(full)
        hidden, pooled, grads = run_model(model, *make_inputs())
        out[pooling] = (hidden, pooled, grads)
    return out


def test_tp2_equals_tp1(tokenizer_file, single_process):
    states, refs = {}, {}
    for pooling in POOLINGS:
        model, full = reference_model(tokenizer_file, pooling)
        states[pooling] = full
        refs[pooling] = run_model(model, *make_inputs())
    results = run_distributed(_tp2_worker, 2, tokenizer_file, states, timeout_s=300)
    for rank_out in results:  # both TP ranks hold the same full view
        for pooling in POOLINGS:
            hidden, pooled, grads = rank_out[pooling]
            ref_hidden, ref_pooled, ref_grads = refs[pooling]
            torch.testing.assert_close(hidden, ref_hidden, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(pooled, ref_pooled, rtol=1e-5, atol=1e-5)
            assert grads.keys() == ref_grads.keys() and grads, pooling
            assert any(k.endswith("lora_A") for k in grads)
            if pooling in ("latent_attention", "self_attention"):
                assert any(k.startswith("pooler.") for k in grads)
            for k in ref_grads:
                torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-4, atol=1e-6, msg=lambda m: f"{pooling} {k}: {m}")


TEXTS = ["Return the sum of a list.", "Sorting is stable in Python.", "x"]


def _tp2_save_worker(rank, world, tokenizer_file, path):
    from nemo_nvembed.parallel import distributed
    from nemo_nvembed.models.network import NVEmbedNetwork

    distributed.initialize(2, seed=7)
    model = NVEmbedNetwork(tiny_config(tokenizer_file)).eval()
    emb = model.encode(TEXTS, instruction="Find it")
    model.save_to(path)
    again = NVEmbedNetwork.load(path, tp=None).encode(TEXTS, instruction="Find it")
    return emb, again


def test_nemo_tp2_save_restores_under_tp1_and_tp2(tokenizer_file, single_process, tmp_path):
    from nemo_nvembed.models.network import NVEmbedNetwork

    path = str(tmp_path / "tp2.nemo")
    (emb0, again0), (emb1, again1) = run_distributed(_tp2_save_worker, 2, tokenizer_file, path, timeout_s=300)
    torch.testing.assert_close(emb0, emb1)
    torch.testing.assert_close(again0, emb0, rtol=0, atol=0)
    restored = NVEmbedNetwork.load(path, tp=None)
    torch.testing.assert_close(restored.encode(TEXTS, instruction="Find it"), emb0, rtol=1e-5, atol=1e-5)
