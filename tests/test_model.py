"""The NeMo model on one process: text handling, padding invariance, .nemo, head layout, configs."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO, tiny_config


def test_padding_invariance(make_tiny):
    """A text embedded alone equals the same text inside a padded batch of 4 (every pooling type)."""
    for pooling in ["latent_attention", "mean", "eos", "self_attention"]:
        for attention in ["bidirectional", "causal"]:
            model = make_tiny(**{"pooling.type": pooling, "attention": attention}).eval()
            texts = ["short", "a much longer text that forces padding onto the others in the batch", "mid length text", "x y"]
            alone = model.encode(texts[:1], instruction="Retrieve it")
            batch = model.encode(texts, instruction="Retrieve it", batch_size=4)
            torch.testing.assert_close(batch[:1], alone, rtol=1e-5, atol=1e-5, msg=f"{pooling}/{attention}")


def test_instruction_mask_covers_text_and_eos_only(make_tiny):
    model = make_tiny()
    instr = "Given a question, retrieve passages"
    text = "What is a Python list?"
    b = model.text([text], instruction=instr)
    ids, pool = b.input_ids[0].tolist(), b.pool_mask[0].tolist()
    prefix = f"Instruct: {instr}\nQuery: "
    assert model.tokenizer.decode(ids[: pool.index(1)]) == prefix.rstrip(" ") or model.tokenizer.decode(ids[: pool.index(1)]) == prefix
    assert model.tokenizer.decode([i for i, p in zip(ids, pool) if p]).strip() == text + model.tokenizer.eos_token
    assert ids[-1] == model.tokenizer.eos_token_id and pool[-1] == 1
    # Documents: no prefix, every token pooled.
    d = model.text([text])
    assert d.pool_mask.sum() == d.attention_mask.sum() == len(d.input_ids[0])


def test_instruction_is_attended_but_not_pooled(make_tiny):
    """Different instructions change the embedding (attention) while pooling only the text's tokens."""
    model = make_tiny(**{"pooling.type": "mean"}).eval()
    a = model.encode(["What is a list?"], instruction="Given a question, retrieve passages")
    b = model.encode(["What is a list?"], instruction="Classify the sentiment of the text")
    assert (a - b).abs().max() > 1e-3
    # Causal attention + mean pooling over text tokens only: the instruction still changes them.
    c = make_tiny(**{"pooling.type": "mean", "attention": "causal"}).eval()
    assert (c.encode(["What?"], instruction="One") - c.encode(["What?"], instruction="Two")).abs().max() > 1e-3


def test_bos_is_attended_not_pooled(tokenizer_file, single_process):
    from nemo_nvembed.models.network import NVEmbedNetwork

    model = NVEmbedNetwork(tiny_config(tokenizer_file, **{"tokenizer.add_bos": True}))
    b = model.text(["hello"], instruction=None)
    assert b.input_ids[0, 0] == model.tokenizer.bos_token_id and b.pool_mask[0, 0] == 0
    assert b.pool_mask[0, 1:].all()


def test_nvembed_v2_pool_span_counts_the_prefix_from_bos(tokenizer_file, single_process):
    """pool_span=nvembed_v2 (the released client): documents pool BOS; a query masks len(tokenize(prefix))
    leading positions, BOS among them. tests/test_export.py checks it against the released algorithm."""
    from nemo_nvembed.models.config import ConfigError, validate_model_config
    from nemo_nvembed.models.network import NVEmbedNetwork

    model = NVEmbedNetwork(tiny_config(tokenizer_file, **{"tokenizer.add_bos": True, "pool_span": "nvembed_v2"}))
    d = model.text(["hello there"])
    assert d.input_ids[0, 0] == model.tokenizer.bos_token_id and torch.equal(d.pool_mask, d.attention_mask)
    prefix = "Instruct: Retrieve it\nQuery: "
    q = model.text(["hello there"], instruction="Retrieve it")
    n = len(model.tokenizer.tokenize(prefix))
    assert q.pool_mask[0, :n].sum() == 0 and q.pool_mask[0, n:].all()
    with pytest.raises(ConfigError, match="pool_span"):
        validate_model_config(tiny_config(tokenizer_file, pool_span="bos"), source="tiny.yaml")


def test_truncation_keeps_eos(make_tiny):
    model = make_tiny()
    b = model.text(["word " * 500], instruction="Find", max_length=32)
    assert b.input_ids.shape[1] == 32 and b.input_ids[0, -1] == model.tokenizer.eos_token_id and b.num_truncated == 1


RESTORE_SCRIPT = """
import sys, torch
from nemo_nvembed.models.network import NVEmbedNetwork
m = NVEmbedNetwork.load(sys.argv[1])
torch.save(m.encode(["alpha beta", "gamma"], instruction="Find"), sys.argv[2])
"""


def test_nemo_round_trip_in_fresh_process(make_tiny, tmp_path):
    model = make_tiny().eval()
    path = tmp_path / "m.nemo"
    model.save_to(str(path))
    out = tmp_path / "emb.pt"
    subprocess.run([sys.executable, "-c", RESTORE_SCRIPT, str(path), str(out)], check=True, capture_output=True)
    torch.testing.assert_close(torch.load(out), model.encode(["alpha beta", "gamma"], instruction="Find"), rtol=0, atol=0)
    # The saved config names no `target` (NeMo 3 would refuse it) but records our class.
    from nemo_nvembed.models.network import NVEmbedNetwork

    from nemo_nvembed.models.checkpoint import NEMO_CLASS
    from nemo_nvembed.training.nemo_model import NVEmbedModel

    conf = NVEmbedNetwork.read_config(str(path))
    assert "target" not in conf and conf.nvembed_class == NEMO_CLASS
    assert NEMO_CLASS == f"{NVEmbedModel.__module__}.{NVEmbedModel.__qualname__}"
    # The NeMo model class restores the same file (the network inside it) and embeds alike.
    again = NVEmbedModel.restore_from(str(path))
    torch.testing.assert_close(again.network.encode(["alpha beta"]), model.encode(["alpha beta"]), rtol=0, atol=0)


def test_released_head_layout_on_meta(single_process):
    """The head with NV-Embed-v2's config has exactly the released parameter names and shapes."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    from nemo_nvembed.models.pooling.latent_attention import AttentionPooler

    cfg = OmegaConf.create(dict(type="latent_attention", num_latents=512, num_heads=8, dim_head=4096, ff_mult=4, normalize=True))
    tcfg = TransformerConfig(num_layers=1, hidden_size=4096, num_attention_heads=32, use_cpu_initialization=True)
    with torch.device("meta"):
        head = AttentionPooler(4096, cfg, tcfg, tp=1)
    shapes = {n: tuple(p.shape) for n, p in head.named_parameters()}
    assert shapes == {
        "latents": (512, 4096),
        "cross_attend_blocks.0.norm.weight": (4096,),
        "cross_attend_blocks.0.norm.bias": (4096,),
        "cross_attend_blocks.0.norm_context.weight": (4096,),
        "cross_attend_blocks.0.norm_context.bias": (4096,),
        "cross_attend_blocks.0.fn.to_q.weight": (32768, 4096),
        "cross_attend_blocks.0.fn.to_kv.weight": (65536, 4096),
        "cross_attend_blocks.0.fn.to_out.weight": (4096, 32768),
        "cross_attend_blocks.1.norm.weight": (4096,),
        "cross_attend_blocks.1.norm.bias": (4096,),
        "cross_attend_blocks.1.fn.net.0.weight": (32768, 4096),
        "cross_attend_blocks.1.fn.net.0.bias": (32768,),
        "cross_attend_blocks.1.fn.net.2.weight": (4096, 16384),
        "cross_attend_blocks.1.fn.net.2.bias": (4096,),
    }
    assert sum(p.numel() for p in head.parameters()) == 740_356_096


@pytest.mark.parametrize("path", sorted((REPO / "conf" / "model").glob("*.yaml")), ids=lambda p: p.name)
def test_model_yaml_validates(path):
    from nemo_nvembed.models.config import validate_model_config

    cfg = validate_model_config(OmegaConf.load(path), source=str(path), require_complete=False)
    assert OmegaConf.missing_keys(cfg) <= {"tokenizer.file"}


def test_misspelled_key_is_named(tokenizer_file):
    from nemo_nvembed.models.config import ConfigError, validate_model_config

    cfg = tiny_config(tokenizer_file)
    cfg.pooling.num_latent = 3
    with pytest.raises(ConfigError, match="num_latent"):
        validate_model_config(cfg, source="tiny.yaml")


def test_unsupported_layout_fails_before_weights(tokenizer_file):
    from nemo_nvembed.models.config import ConfigError, check_parallel_layout, validate_model_config

    smol = validate_model_config(OmegaConf.load(REPO / "conf" / "model" / "smollm2_135m.yaml"), require_complete=False)
    with pytest.raises(ConfigError, match="num_attention_heads=9 is not divisible by tensor_model_parallel_size=2"):
        check_parallel_layout(smol, tp=2)
    with pytest.raises(ConfigError, match="pipeline_model_parallel_size=2"):
        check_parallel_layout(smol, tp=1, pp=2)
    check_parallel_layout(smol, tp=3)


def test_only_lora_and_head_train(make_tiny):
    model = make_tiny()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("pooler.") for n in trainable)
    assert any("lora_" in n for n in trainable)


def test_lora_first_layer_leaves_lower_layers_without_adapters(make_tiny):
    import re

    from nemo_nvembed.models.config import ConfigError

    model = make_tiny(**{"lora.first_layer": 1})
    layers = {int(m.group(1)) for n, _ in model.named_parameters() if "lora_" in n
              for m in [re.search(r"layers\.(\d+)\.", n)]}
    assert layers == set(range(1, model.cfg.backbone.num_layers))
    with pytest.raises(ConfigError, match="lora.first_layer: must be in"):
        make_tiny(**{"lora.first_layer": model.cfg.backbone.num_layers})


def test_gpu_config_builds_the_local_layer_spec(monkeypatch, tokenizer_file):
    """On a GPU without transformer-engine the backbone uses megatron's local spec (torch RMSNorm), which
    refuses ``persist_layer_norm``: the GPU check found every CUDA build failing on it (H200, 2026-11-27).
    The CUDA-side config is built here with CUDA only pretended, and its norm constructed."""
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    from nemo_nvembed.models import backbone
    from nemo_nvembed.parallel import cpu_compat

    monkeypatch.setattr(cpu_compat, "cuda_available", lambda: True)
    cfg = tiny_config(tokenizer_file)
    tc = backbone.transformer_config(cfg.backbone, tp=1)
    assert not tc.persist_layer_norm
    assert not tc.use_cpu_initialization  # the CUDA branch was taken
    WrappedTorchNorm(config=tc, hidden_size=cfg.backbone.hidden_size, eps=tc.layernorm_epsilon, normalization="RMSNorm")
    # Sequence parallelism (never run on a GPU here) only when model.sequence_parallel asks for it.
    assert not backbone.transformer_config(cfg.backbone, tp=2).sequence_parallel
    assert backbone.transformer_config(cfg.backbone, tp=2, sequence_parallel=True).sequence_parallel


def test_pool_spans_agree_with_the_exported_remote_code():
    """The exported remote code cannot import nemo_nvembed; its copy of the pool_span values must match."""
    import importlib.util

    from nemo_nvembed.models.text import POOL_SPANS

    path = REPO / "nemo_nvembed" / "interop" / "remote_code" / "configuration_nvembed.py"
    spec = importlib.util.spec_from_file_location("configuration_nvembed", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.POOL_SPANS == POOL_SPANS


def test_frozen_weights_in_bf16_keep_fp32_trainables_and_fp32_nemo(tokenizer_file, single_process, tmp_path):
    """trainer.precision bf16: the frozen backbone is held in bf16 (no per-call casts under autocast);
    LoRA and the head stay fp32 (master weights, Adam state); the bf16 step stays close to the fp32-weight
    bf16 step; the .nemo is written in fp32."""
    from conftest import model_with_random_lora

    from nemo_nvembed.models.checkpoint import load_weights, read_config

    net, _ = model_with_random_lora(tokenizer_file, seed=3, **{"lora.dropout": 0.0})
    net.train()
    b = net.text(["a longer text of several words about sorting lists", "short"], instruction="Find it")

    def step():
        net.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            e = net(b.input_ids, b.attention_mask, b.pool_mask)
        e.float().sum().backward()
        return e.float().detach(), {n: p.grad.float() for n, p in net.named_parameters() if p.grad is not None}

    e0, g0 = step()
    net.cast_frozen_(torch.bfloat16)
    assert {p.dtype for p in net.parameters() if not p.requires_grad} == {torch.bfloat16}
    assert {p.dtype for p in net.parameters() if p.requires_grad} == {torch.float32}
    e1, g1 = step()
    assert torch.nn.functional.cosine_similarity(e0, e1).min() > 0.999
    for k in g0:
        assert torch.nn.functional.cosine_similarity(g0[k].flatten(), g1[k].flatten(), dim=0) > 0.99, k
    net.save_to(str(tmp_path / "m.nemo"))
    saved = load_weights(tmp_path / "m.nemo", read_config(tmp_path / "m.nemo"))
    assert {v.dtype for v in saved.values()} == {torch.float32}
