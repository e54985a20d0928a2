"""Export to NV-Embed-v2's Hugging Face layout, and import of that layout (``convert from-hf``).

(a) An independent plain-PyTorch reference (transformers' MistralModel from ``text_config`` + a
    latent-attention head written here from the released NV-Embed-v2 head + NV-Embed's text
    handling), reading only the exported folder, reproduces our ``encode`` (fp32) for a tiny model
    whose LoRA B and head are random. The head's names and shapes follow the facts table.
(b) A model built and saved under TP=2 (two gloo processes), exported under TP=2 and under TP=1
    (identical files), imported back with ``convert from-hf`` under TP=2 and TP=1: equal embeddings.
(c) mean pooling exports the backbone alone and round-trips; self_attention is refused.
"""
from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from dist_utils import run_distributed

QUERIES = ["How do I sort a list in Python?", "what is a tuple", "x"]
DOCS = ["sorted(iterable) returns a new sorted list.", "A tuple is an immutable sequence.", "The Eiffel Tower is in Paris."]
INSTRUCTION = "Given a question, retrieve passages that answer the question"
TINY = {"pooling.dim_head": 24, "lora.dropout": 0.0}  # inner width 2*24=48 != hidden 64: catches transposes


def randomize(model, seed: int) -> None:
    """Non-trivial LoRA B (merged at export) and head (LN weights != 1, biases != 0); same on every rank."""
    full = model.full_state_dict()
    g = torch.Generator().manual_seed(seed)
    for name, t in full.items():
        if name.endswith("lora_B"):
            full[name] = 0.05 * torch.randn(t.shape, generator=g)
        elif name.startswith("latent_attention_model."):
            full[name] = t + 0.1 * torch.randn(t.shape, generator=g)
    model.load_full_state_dict(full)


def load_folder(folder):
    from safetensors.torch import load_file

    with open(os.path.join(folder, "config.json")) as f:
        return json.load(f), load_file(os.path.join(folder, "model.safetensors"))


# ---------------------------------------------------------------------------------- reference
def reference_embed(folder: str, texts: list[str], instruction: str | None, pool_span: str = "exact") -> torch.Tensor:
    """NV-Embed-v2 from the exported folder alone: transformers backbone + the facts file's head.

    ``pool_span="nvembed_v2"`` tokenizes and masks literally as NV-Embed-v2's released ``encode``
    does: ``tokenizer(prefix + text + eos_token)`` (the tokenizer's own BOS), then the first
    ``len(tokenizer.tokenize(prefix))`` positions leave the pooling mask.
    """
    from transformers import LlamaConfig, LlamaModel, MistralConfig, MistralModel, PreTrainedTokenizerFast

    cfg, sd = load_folder(folder)
    tc, la = dict(cfg["text_config"]), cfg["latent_attention_config"]
    model_type = tc.pop("model_type")
    tc.pop("_name_or_path")
    assert model_type.startswith("bidir_"), model_type  # NV-Embed-v2's client reads this prefix as bidirectional
    classes = {"bidir_mistral": (MistralConfig, MistralModel), "bidir_llama": (LlamaConfig, LlamaModel)}[model_type]
    hf = classes[1](classes[0](**tc, attn_implementation="eager")).eval()
    hf.load_state_dict({k.removeprefix("embedding_model."): v for k, v in sd.items() if k.startswith("embedding_model.")})
    tok = PreTrainedTokenizerFast.from_pretrained(folder)
    assert tok.padding_side == "right" and cfg["padding_side"] == "right" and cfg["add_eos"] and cfg["is_mask_instruction"]

    prefix = f"Instruct: {instruction}\nQuery: " if instruction else ""
    rows = []
    for t in texts:
        if pool_span == "exact":
            # Text handling: query prefix; the tokenizer's own BOS; EOS appended; pooled = tokens ending
            # inside the text (not BOS, not the instruction prefix) + EOS; right padding.
            enc = tok(prefix + t, add_special_tokens=True, return_offsets_mapping=True)
            pool = [int(end > len(prefix)) for _, end in enc["offset_mapping"]]
            rows.append((enc["input_ids"] + [tok.eos_token_id], pool + [1]))
        else:
            ids = tok(prefix + t + tok.eos_token)["input_ids"]
            n = len(tok.tokenize(prefix)) if prefix else 0
            rows.append((ids, [0] * n + [1] * (len(ids) - n)))
    s = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), s), tok.pad_token_id)
    att, pool = torch.zeros(len(rows), s), torch.zeros(len(rows), s)
    for i, (r_ids, r_pool) in enumerate(rows):
        ids[i, : len(r_ids)], att[i, : len(r_ids)], pool[i, : len(r_pool)] = torch.tensor(r_ids), 1, torch.tensor(r_pool, dtype=torch.float)
    blocked = ~att.bool()[:, None, None, :].expand(-1, 1, s, s)  # bidirectional: every real key
    mask = torch.zeros(blocked.shape).masked_fill(blocked, torch.finfo(torch.float32).min)
    with torch.no_grad():
        h = hf(ids, attention_mask=mask).last_hidden_state  # [b, s, d]
        return latent_attention_reference(h, pool, sd, la)


def latent_attention_reference(h, pool, sd, la):
    """Facts file, 'Forward, in order', with the released parameter names."""
    P = "latent_attention_model.cross_attend_blocks."
    heads, dh = la["num_cross_heads"], la["cross_dim_head"]
    b, s, _ = h.shape

    def ln(x, name):
        return F.layer_norm(x, x.shape[-1:], sd[P + name + ".weight"], sd[P + name + ".bias"])

    def split(t):  # [b, n, heads*dh] -> [b, heads, n, dh]
        return t.view(b, t.shape[1], heads, dh).transpose(1, 2)

    x = sd["latent_attention_model.latents"].unsqueeze(0).expand(b, -1, -1)  # 1. [b, r, d]
    q = ln(h, "0.norm") @ sd[P + "0.fn.to_q.weight"].T  # 2. queries from the token states
    k, v = (ln(x, "0.norm_context") @ sd[P + "0.fn.to_kv.weight"].T).chunk(2, dim=-1)  # first half K
    attn = torch.softmax(split(q) @ split(k).transpose(-1, -2) * dh**-0.5, dim=-1)  # [b, heads, s, r], no mask
    h = h + (attn @ split(v)).transpose(1, 2).reshape(b, s, heads * dh) @ sd[P + "0.fn.to_out.weight"].T
    y = ln(h, "1.norm") @ sd[P + "1.fn.net.0.weight"].T + sd[P + "1.fn.net.0.bias"]  # 3. GEGLU MLP
    a, gate = y.chunk(2, dim=-1)
    h = h + (a * F.gelu(gate)) @ sd[P + "1.fn.net.2.weight"].T + sd[P + "1.fn.net.2.bias"]
    m = pool.unsqueeze(-1)
    pooled = (h * m).sum(1) / m.sum(1)  # 4. masked mean
    return F.normalize(pooled, dim=-1) if la["output_normalize"] else pooled


def expected_head_shapes(d: int, r: int, heads: int, dh: int) -> dict[str, tuple]:
    """The facts table with d=4096, r=512, 8 heads of 4096, scaled to any size."""
    inner = heads * dh
    P = "latent_attention_model."
    shapes = {P + "latents": (r, d), P + "cross_attend_blocks.0.fn.to_q.weight": (inner, d),
              P + "cross_attend_blocks.0.fn.to_kv.weight": (2 * inner, d), P + "cross_attend_blocks.0.fn.to_out.weight": (d, inner),
              P + "cross_attend_blocks.1.fn.net.0.weight": (8 * d, d), P + "cross_attend_blocks.1.fn.net.0.bias": (8 * d,),
              P + "cross_attend_blocks.1.fn.net.2.weight": (d, 4 * d), P + "cross_attend_blocks.1.fn.net.2.bias": (d,)}
    for norm in ("0.norm", "0.norm_context", "1.norm"):
        shapes.update({f"{P}cross_attend_blocks.{norm}.weight": (d,), f"{P}cross_attend_blocks.{norm}.bias": (d,)})
    return shapes


@pytest.mark.parametrize("family", ["mistral", "llama"])
def test_export_matches_independent_reference(make_tiny, tmp_path, family):
    from nemo_nvembed.interop.hf_export import export_hf

    # add_bos on: the exported tokenizer must add BOS itself (SmolLM2's does not), and BOS is never pooled.
    model = make_tiny(**TINY, **{"tokenizer.add_bos": True, "backbone.family": family}).eval()
    randomize(model, seed=3)
    out = str(tmp_path / "hf")
    export_hf(model, out)

    cfg, sd = load_folder(out)
    assert cfg["model_type"] == "nvembed" and cfg["architectures"] == ["NVEmbedModel"]
    assert cfg["latent_attention_config"] == {"model_type": "latent_attention", "num_latents_value": 16, "num_cross_heads": 2,
                                              "hidden_dim": 64, "latent_dim": 64, "cross_dim_head": 24, "output_normalize": True,
                                              "ff_mult": 4}
    assert cfg["text_config"]["model_type"] == f"bidir_{family}" and cfg["text_config"]["num_key_value_heads"] == 2
    assert cfg["hidden_size"] == 64 and cfg["mask_type"] == "b" and cfg["text_config"]["_name_or_path"] == os.path.abspath(out)
    head = {k: tuple(v.shape) for k, v in sd.items() if k.startswith("latent_attention_model.")}
    assert head == expected_head_shapes(64, 16, 2, 24)
    assert all(k.startswith(("embedding_model.", "latent_attention_model.")) for k in sd)

    for texts, instruction in ((QUERIES, INSTRUCTION), (DOCS, None)):
        ours = model.encode(texts, instruction=instruction, batch_size=2)
        ref = reference_embed(out, texts, instruction)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=2e-6)
    # The reference really excludes BOS and the prefix: pooling them too would change the result.
    batch = model.text(QUERIES[:1], INSTRUCTION)
    assert batch.input_ids[0, 0] == model.tokenizer.bos_token_id and batch.pool_mask[0, 0] == 0
    with pytest.raises(FileExistsError):
        export_hf(model, out)


# ---------------------------------------------------------------------------------- TP=2 round trip
def _tp2_worker(rank, world, tokenizer_file, tmp):
    from nemo_nvembed import convert, export
    from nemo_nvembed.parallel import distributed
    from nemo_nvembed.models.network import NVEmbedNetwork

    distributed.initialize(2, seed=5)
    model = NVEmbedNetwork(tiny_config(tokenizer_file, **TINY)).eval()
    randomize(model, seed=11)
    model.save_to(os.path.join(tmp, "tp2.nemo"))
    emb = (model.encode(QUERIES, instruction=INSTRUCTION), model.encode(DOCS))
    export.main(["hf", "--model", os.path.join(tmp, "tp2.nemo"), "--out", os.path.join(tmp, "hf_tp2")])  # TP = 2 processes
    convert.main(["from-hf", os.path.join(tmp, "hf_tp2"), "--out", os.path.join(tmp, "imported_tp2.nemo"), "--tp", "2"])
    imported = NVEmbedNetwork.load(os.path.join(tmp, "imported_tp2.nemo"), tp=None).eval()
    return emb, (imported.encode(QUERIES, instruction=INSTRUCTION), imported.encode(DOCS))


def test_tp2_export_import_round_trip(tokenizer_file, single_process, tmp_path):
    from nemo_nvembed import convert, export
    from nemo_nvembed.models.network import NVEmbedNetwork

    tmp = str(tmp_path)
    (ref, imported_tp2), (ref1, _) = run_distributed(_tp2_worker, 2, tokenizer_file, tmp, timeout_s=300)
    for a, b in zip(ref, ref1):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(imported_tp2, ref):  # exported + imported under TP=2
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6)

    export.main(["hf", "--model", os.path.join(tmp, "tp2.nemo"), "--out", os.path.join(tmp, "hf_tp1"), "--tp", "1"])
    (cfg2, sd2), (cfg1, sd1) = load_folder(os.path.join(tmp, "hf_tp2")), load_folder(os.path.join(tmp, "hf_tp1"))
    for c, name in ((cfg1, "hf_tp1"), (cfg2, "hf_tp2")):  # where each folder was written: the only difference
        assert c["text_config"].pop("_name_or_path") == os.path.abspath(os.path.join(tmp, name))
    assert cfg1 == cfg2 and sd1.keys() == sd2.keys()
    for k in sd1:  # the TP=2 gather and the TP=1 export write the same tensors
        torch.testing.assert_close(sd1[k], sd2[k], rtol=0, atol=0, msg=lambda m: f"{k}: {m}")

    convert.main(["from-hf", os.path.join(tmp, "hf_tp1"), "--out", os.path.join(tmp, "imported_tp1.nemo")])
    for path in ("imported_tp1.nemo", "imported_tp2.nemo"):
        model = NVEmbedNetwork.load(os.path.join(tmp, path), tp=None).eval()
        assert model.cfg.pooling.type == "latent_attention" and model.cfg.pooling.dim_head == 24
        got = (model.encode(QUERIES, instruction=INSTRUCTION), model.encode(DOCS))
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6, msg=lambda m: f"{path}: {m}")


def test_import_released_style_folder(make_tiny, tmp_path):
    """As released: none of our extra fields (no pool_span), no tokenizer_class; a BOS tokenizer.

    The import pools as NV-Embed-v2's client does (pool_span=nvembed_v2, checked against the
    released algorithm in reference_embed); model.pool_span=exact gives back the exported model.
    """
    from nemo_nvembed import convert
    from nemo_nvembed.interop.hf_export import export_hf
    from nemo_nvembed.models.network import NVEmbedNetwork

    model = make_tiny(**TINY, **{"tokenizer.add_bos": True}).eval()
    randomize(model, seed=8)
    out = tmp_path / "hf"
    export_hf(model, str(out))
    cfg = json.loads((out / "config.json").read_text())
    for key in ("pooling", "attention", "query_template", "max_length", "pool_span", "auto_map"):
        del cfg[key]
    (out / "config.json").write_text(json.dumps(cfg))
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    del tok_cfg["tokenizer_class"]
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    convert.main(["from-hf", str(out), "--out", str(tmp_path / "released.nemo")])
    back = NVEmbedNetwork.load(str(tmp_path / "released.nemo"), tp=None).eval()
    assert back.cfg.lora.enabled and back.cfg.lora.rank == 16  # fresh LoRA from mistral_7b.yaml (B = 0)
    assert back.cfg.pool_span == "nvembed_v2" and back.cfg.attention == "bidirectional"
    for texts, instruction in ((QUERIES, INSTRUCTION), (DOCS, None)):
        torch.testing.assert_close(back.encode(texts, instruction=instruction), reference_embed(str(out), texts, instruction, "nvembed_v2"),
                                   rtol=1e-5, atol=2e-6)
    # The conventions differ for documents (BOS pooled). For these queries they coincide: the prefix
    # tokenized alone ends with a lone "Ġ" that the joint string merges into the first word, so the
    # released count covers BOS + the prefix exactly.
    assert (back.encode(DOCS) - model.encode(DOCS)).abs().max() > 1e-3

    convert.main(["from-hf", str(out), "--out", str(tmp_path / "exact.nemo"), "model.pool_span=exact"])
    exact = NVEmbedNetwork.load(str(tmp_path / "exact.nemo"), tp=None).eval()
    torch.testing.assert_close(exact.encode(QUERIES, instruction=INSTRUCTION), model.encode(QUERIES, instruction=INSTRUCTION),
                               rtol=1e-5, atol=2e-6)


# ---------------------------------------------------------------------------------- other poolings
def test_mean_pooling_exports_backbone_only_and_round_trips(make_tiny, tmp_path):
    from nemo_nvembed import convert
    from nemo_nvembed.interop.hf_export import export_hf
    from nemo_nvembed.models.network import NVEmbedNetwork

    model = make_tiny(**TINY, **{"pooling.type": "mean"}).eval()
    randomize(model, seed=4)
    export_hf(model, str(tmp_path / "hf"))
    cfg, sd = load_folder(str(tmp_path / "hf"))
    assert cfg["model_type"] == "nvembed_backbone" and "latent_attention_config" not in cfg
    assert cfg["pooling"] == {"type": "mean", "normalize": True}
    assert all(k.startswith("embedding_model.") for k in sd)
    convert.main(["from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "mean.nemo")])
    back = NVEmbedNetwork.load(str(tmp_path / "mean.nemo"), tp=None).eval()
    assert back.cfg.pooling.type == "mean"
    torch.testing.assert_close(back.encode(QUERIES, instruction=INSTRUCTION), model.encode(QUERIES, instruction=INSTRUCTION),
                               rtol=1e-5, atol=2e-6)


def test_self_attention_pooling_is_refused(make_tiny, tmp_path):
    from nemo_nvembed.interop.hf_export import export_hf

    with pytest.raises(ValueError, match="no NV-Embed-v2 layout"):
        export_hf(make_tiny(**{"pooling.type": "self_attention"}), str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()
