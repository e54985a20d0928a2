"""An export is proven by the clients people load it with (issue 12).

Tiny random models (LoRA B merged at export, a head with non-trivial weights) are exported; a fresh
Python process loads each folder with ``transformers.AutoModel.from_pretrained(dir,
trust_remote_code=True)`` and with ``sentence_transformers.SentenceTransformer(dir,
trust_remote_code=True)`` and embeds queries (with the NQ instruction: ``encode(...,
instruction=prefix)``, ``prompt_name="NQ"``) and documents (no instruction). Each must equal our
``encode`` (cosine >= 0.9999 per text). Variants: Mistral with a BOS tokenizer, Llama without BOS
(SmolLM2's), and Mistral with ``pool_span=nvembed_v2`` (the remote code honours the setting).
Run with ``-s`` to see the cosines.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from test_export import DOCS, QUERIES, TINY, randomize

NQ = "Given a question, retrieve Wikipedia passages that answer the question"  # conf/tasks.yaml, Table 7
VARIANTS = {
    "mistral_bos": {"backbone.family": "mistral", "tokenizer.add_bos": True},
    "llama_nobos": {"backbone.family": "llama", "tokenizer.add_bos": False},
    "mistral_bos_nvembed_v2": {"backbone.family": "mistral", "tokenizer.add_bos": True, "pool_span": "nvembed_v2"},
}
MIN_COSINE = 0.9999

CLIENT_SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    folders, queries, docs, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
    results = {}
    for name, folder in folders.items():
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        prefix = model.config.query_template.format(instruction="%s")
        st = SentenceTransformer(folder, trust_remote_code=True)
        results[name] = {
            "transformers": (model.encode(queries, instruction=prefix), model.encode(docs)),
            "sentence_transformers": (torch.from_numpy(st.encode(queries, prompt_name="NQ")),
                                      torch.from_numpy(st.encode(docs))),
            "st_dim": st.get_sentence_embedding_dimension(),
            "st_prompt": st.prompts["NQ"],
            "embedding_model": type(model.embedding_model).__name__,
        }
    torch.save(results, out)
''' % NQ)


@pytest.fixture(scope="module")
def exported(tokenizer_file, single_process, tmp_path_factory):
    """{variant: (folder, our query embeddings, our document embeddings, model)} and the clients' results."""
    from nemo_nvembed.interop.hf_export import export_hf
    from nemo_nvembed.models.network import NVEmbedNetwork

    tmp = tmp_path_factory.mktemp("hf_clients")
    ours = {}
    for i, (name, overrides) in enumerate(VARIANTS.items()):
        model = NVEmbedNetwork(tiny_config(tokenizer_file, **TINY, **overrides)).eval()
        randomize(model, seed=20 + i)
        export_hf(model, str(tmp / name))
        ours[name] = (str(tmp / name), model.encode(QUERIES, instruction=NQ), model.encode(DOCS), model)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp / "hf_modules"), TOKENIZERS_PARALLELISM="false")
    out = tmp / "clients.pt"
    folders = {name: v[0] for name, v in ours.items()}
    proc = subprocess.run([sys.executable, "-c", CLIENT_SCRIPT, json.dumps(folders), json.dumps(QUERIES), json.dumps(DOCS),
                           str(out)], env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return ours, torch.load(out)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("client", ["transformers", "sentence_transformers"])
def test_client_equals_encode(exported, variant, client):
    ours, results = exported
    _, q, d, _ = ours[variant]
    got_q, got_d = results[variant][client]
    for kind, a, b in (("queries", got_q, q), ("documents", got_d, d)):
        cos = F.cosine_similarity(a.float(), b, dim=-1)
        print(f"{client} {variant} {kind}: min cosine {cos.min().item():.7f}, max |diff| {(a - b).abs().max().item():.2e}")
        assert cos.min() >= MIN_COSINE, f"{client} {variant} {kind}: cosines {cos.tolist()}"


def test_client_view_of_the_export(exported):
    ours, results = exported
    for name, (folder, *_rest, model) in ours.items():
        r = results[name]
        assert r["st_dim"] == 64 and r["st_prompt"] == f"Instruct: {NQ}\nQuery: "
        family = VARIANTS[name]["backbone.family"]
        assert r["embedding_model"] == f"Bidirectional{family.capitalize()}Model"
        modules = json.load(open(os.path.join(folder, "modules.json")))
        assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Normalize"]
        cfg = json.load(open(os.path.join(folder, "config.json")))
        assert cfg["pool_span"] == model.cfg.pool_span and cfg["auto_map"]["AutoModel"] == "modeling_nvembed.NVEmbedModel"
        assert cfg["text_config"]["model_type"] == f"bidir_{family}"
        prompts = json.load(open(os.path.join(folder, "config_sentence_transformers.json")))["prompts"]
        assert prompts["ArguAna"] == "Instruct: Given a claim, find documents that refute the claim\nQuery: "


def test_tokenizer_json_has_legacy_merges(exported):
    """Merges as "a b" strings (what tokenizers < 0.20 parses); the installed tokenizers reads them identically."""
    from tokenizers import Tokenizer

    ours, _ = exported
    folder, *_rest, model = ours["llama_nobos"]
    path = os.path.join(folder, "tokenizer.json")
    merges = json.load(open(path))["model"]["merges"]
    assert merges and all(isinstance(m, str) and len(m.split(" ")) == 2 for m in merges)
    text = "Instruct: héllo wörld\nQuery: sorted(x) -> list  # 12345"
    assert Tokenizer.from_file(path).encode(text, add_special_tokens=False).ids == \
        model.tokenizer(text, add_special_tokens=False)["input_ids"]
