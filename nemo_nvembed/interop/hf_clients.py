"""What an NV-Embed export needs so that Hugging Face clients load it unchanged.

``python -m nemo_nvembed.export hf`` writes NV-Embed-v2's layout; this module adds, for
latent-attention exports:

- ``transformers``: the remote code (``remote_code/*.py``, package data, copied into the folder)
  and the config keys the release has: ``auto_map``, top-level ``hidden_size`` and ``mask_type``,
  ``text_config.model_type`` ``bidir_mistral`` / ``bidir_llama`` (``mistral`` / ``llama`` for a
  causal model) and ``text_config._name_or_path`` (where the released client loads the
  tokenizer from). ``AutoModel.from_pretrained(dir, trust_remote_code=True)`` then gives
  ``NVEmbedModel`` with ``encode(prompts, instruction=prefix, max_length=...)``.
- ``sentence-transformers`` (>= 6): ``modules.json`` (our input module -> ``Pooling`` mean ->
  ``Normalize`` when the model normalises), ``sentence_bert_config.json``,
  ``1_Pooling/config.json`` and ``config_sentence_transformers.json`` with one prompt per task of
  ``conf/tasks.yaml`` (Table 7 instructions in the model's ``query_template``) and cosine
  similarity.
- ``tokenizer.json`` with BPE merges as ``"a b"`` strings (the format tokenizers < 0.20 reads;
  newer releases read both).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

REMOTE_CODE = Path(__file__).resolve().parent / "remote_code"
REMOTE_FILES = ("configuration_nvembed.py", "modeling_nvembed.py", "sentence_transformers_nvembed.py")
AUTO_MAP = {"AutoConfig": "configuration_nvembed.NVEmbedConfig", "AutoModel": "modeling_nvembed.NVEmbedModel"}
ST_INPUT_MODULE = "sentence_transformers_nvembed.NVEmbedTransformer"


def text_model_type(family: str, attention: str) -> str:
    """``text_config.model_type``: the attention is in the name, as NV-Embed-v2's client reads it."""
    return f"bidir_{family}" if attention == "bidirectional" else family


def client_config(config: dict, cfg, name_or_path: str) -> dict:
    """Add the keys HF clients read to ``config`` (the ``config.json`` dict), in place; returns it."""
    text = config["text_config"]
    text["model_type"] = text_model_type(cfg.backbone.family, cfg.attention)
    text["_name_or_path"] = name_or_path
    config["hidden_size"] = cfg.backbone.hidden_size  # the embedding width (sentence-transformers reads it)
    config["mask_type"] = "b" if cfg.attention == "bidirectional" else "c"
    config["pool_span"] = cfg.pool_span
    if config["model_type"] == "nvembed":
        config["auto_map"] = dict(AUTO_MAP)
        config["latent_attention_config"]["ff_mult"] = cfg.pooling.ff_mult
    return config


def st_prompts(query_template: str, tasks_yaml: str | os.PathLike) -> dict[str, str]:
    """One sentence-transformers prompt per task: the task's evaluation instruction (Table 7) as a query prefix."""
    from nemo_nvembed.data.tasks import TaskRegistry

    registry = TaskRegistry.from_yaml(tasks_yaml)
    return {name: query_template.format(instruction=registry[name].eval_instruction) for name in registry.names}


def _versions() -> dict[str, str]:
    """Installed versions for config_sentence_transformers.json; sentence-transformers itself is not needed to export."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for key, dist in (("sentence_transformers", "sentence-transformers"), ("transformers", "transformers"), ("pytorch", "torch")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def write_sentence_transformers(folder: str, cfg, prompts: dict[str, str]) -> None:
    modules = [{"idx": 0, "name": "0", "path": "", "type": ST_INPUT_MODULE},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.sentence_transformer.modules.Pooling"}]
    if cfg.pooling.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.base.modules.Normalize"})
    files = {
        "modules.json": modules,
        "sentence_bert_config.json": {
            "transformer_task": "feature-extraction",
            "modality_config": {"text": {"method": "forward", "method_output_name": "token_embeddings"}},
            "module_output_name": "token_embeddings",
        },
        "1_Pooling/config.json": {"embedding_dimension": cfg.backbone.hidden_size, "pooling_mode": "mean",
                                  "include_prompt": True},  # the input module's mask already leaves the prefix out
        "config_sentence_transformers.json": {
            "__version__": _versions(),
            "model_type": "SentenceTransformer",
            "requirements": {"sentence_transformers": ">=6.0"},
            "prompts": prompts,
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    }
    for name, data in files.items():
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(data, f, indent=2)
    if cfg.pooling.normalize:
        os.makedirs(os.path.join(folder, "2_Normalize"), exist_ok=True)


def legacy_merges(tokenizer_json: str) -> None:
    """Rewrite a BPE ``tokenizer.json``'s merges from ``[a, b]`` pairs to ``"a b"`` strings, in place.

    tokenizers < 0.20 (NV-Embed-v2's card pins transformers 4.42.4, i.e. tokenizers 0.19) parses
    only strings. A merge whose pieces contain a space cannot be written that way: refused.
    """
    with open(tokenizer_json) as f:
        data = json.load(f)
    model = data.get("model", {})
    if model.get("type") != "BPE":
        return
    merges = []
    for m in model.get("merges", []):
        if isinstance(m, list):
            if any(" " in piece for piece in m):
                raise ValueError(f"{tokenizer_json}: merge {m!r} contains a space; the legacy format cannot hold it")
            m = " ".join(m)
        merges.append(m)
    model["merges"] = merges
    with open(tokenizer_json, "w") as f:
        json.dump(data, f, ensure_ascii=False, indent=2)


def write_client_files(folder: str, config: dict, cfg, tasks_yaml: str | os.PathLike) -> None:
    """Remote code, sentence-transformers files and a legacy-format tokenizer.json into an export folder."""
    legacy_merges(os.path.join(folder, "tokenizer.json"))
    if config["model_type"] != "nvembed":
        return  # mean/eos exports: backbone only, for `convert from-hf` (no client code yet)
    for name in REMOTE_FILES:
        shutil.copyfile(REMOTE_CODE / name, os.path.join(folder, name))
    write_sentence_transformers(folder, cfg, st_prompts(cfg.query_template, tasks_yaml))
