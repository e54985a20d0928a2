"""Import a Hugging Face checkpoint into a ``.nemo`` (``python -m nemo_nvembed.convert from-hf``; sources in its help).

The backbone section of the model config comes from the source; pooling, LoRA, attention and text
handling from a conf/model YAML plus overrides, or from an NV-Embed-v2 folder's own config.
"""
from __future__ import annotations

import os
import tempfile

from omegaconf import OmegaConf

from nemo_nvembed.checks.errors import UserError
from nemo_nvembed.checks.schema import same_value
from nemo_nvembed.models.config import check_parallel_layout, validate_model_config
from nemo_nvembed.paths import model_config_path


def parse_overrides(overrides: list[str]):
    """``model.a.b=v`` (or ``a.b=v``) -> a DictConfig to merge onto the model config."""
    dotlist = []
    for o in overrides:
        if "=" not in o:
            raise UserError(f"override {o!r} is not key=value")
        key, value = o.split("=", 1)
        dotlist.append(f"{key.removeprefix('model.')}={value}")
    return OmegaConf.from_dotlist(dotlist)


def nvembed_sections(nv: dict, state_dict, bcfg: dict) -> dict:
    """Model-config sections (pooling, attention, text handling) of an NV-Embed-v2-layout folder."""
    from nemo_nvembed.interop.hf_import import nvembed_pooling_config

    if nv.get("padding_side", "right") != "right" or not nv.get("add_eos", True) or not nv.get("is_mask_instruction", True):
        print(f"note: the source says padding_side={nv.get('padding_side')!r}, add_eos={nv.get('add_eos')}, "
              f"is_mask_instruction={nv.get('is_mask_instruction')}; this model always pads right, appends EOS "
              f"and leaves the instruction out of the pooled mean")
    out = {"pooling": nvembed_pooling_config(nv, state_dict, bcfg["hidden_size"])}
    for key in ("attention", "query_template", "max_length", "pool_span"):  # written by nemo_nvembed.export; absent in releases
        if key in nv:
            out[key] = nv[key]
    if "attention" not in nv:  # as NV-Embed-v2's client reads text_config.model_type
        out["attention"] = "bidirectional" if str(nv["text_config"].get("model_type")).startswith("bidir_") else "causal"
    if "pool_span" not in nv:  # a released NV-Embed-v2 folder: pool as its own client does
        out["pool_span"] = "nvembed_v2"
        print("note: pool_span=nvembed_v2 (the released client's pooled span: BOS pooled, the query prefix masked by "
              "its token count); override with model.pool_span=exact")
    return out


def build_config(src_backbone: dict, tok_cfg: dict, tokenizer_file: str, base: str, overrides: list[str],
                 sections: dict | None = None):
    path = model_config_path(base)
    cfg = OmegaConf.load(path)
    for key, value in src_backbone.items():
        old = OmegaConf.select(cfg, f"backbone.{key}")
        if old is not None and not same_value(old, value):
            print(f"note: backbone.{key}: {path.name} says {old}, the source says {value}; using the source")
    cfg.backbone = OmegaConf.merge(cfg.backbone, src_backbone)
    cfg.tokenizer = OmegaConf.merge(cfg.tokenizer, tok_cfg, {"file": tokenizer_file})
    if sections:
        cfg = OmegaConf.merge(cfg, sections)
    cfg = OmegaConf.merge(cfg, parse_overrides(overrides))
    return validate_model_config(cfg, source=f"{path} + overrides")


def from_hf(src_name: str, out: str, tp_wanted: int, model_config: str | None, overrides: list[str]) -> None:
    """``convert from-hf``: load `src_name`, build the model config, copy the weights in, write `out`."""
    from nemo_nvembed.interop.hf_checks import check_backbone_tensors, checked_backbone_config
    from nemo_nvembed.interop.hf_import import HEAD_PREFIX, head_from_hf, hf_to_megatron, load_source, tokenizer_config
    from nemo_nvembed.parallel import distributed

    src = load_source(src_name)
    print(f"loaded {src.description}")
    base = model_config or ("smollm2_135m" if src_name == "smollm2" else "mistral_7b")
    with tempfile.TemporaryDirectory() as tmp:
        tok_file = os.path.join(tmp, "tokenizer.json")
        src.tokenizer.backend_tokenizer.save(tok_file)
        bcfg = checked_backbone_config(src.config, src.description)
        check_backbone_tensors(src.state_dict, bcfg, src.description)
        sections = None if src.nvembed is None else nvembed_sections(src.nvembed, src.state_dict, bcfg)
        cfg = build_config(bcfg, tokenizer_config(src.tokenizer), tok_file, base, overrides, sections)
        check_parallel_layout(cfg, tp_wanted, source=f"--tp {tp_wanted}")
        world = distributed.read_env().world_size
        tp = tp_wanted if world % tp_wanted == 0 and world >= tp_wanted else 1
        distributed.initialize(tp, seed=cfg.seed)
        from nemo_nvembed.models.network import NVEmbedNetwork

        model = NVEmbedNetwork(cfg)
        full = model.full_state_dict()
        full.update(hf_to_megatron(src.state_dict, bcfg))
        if src.nvembed is not None:  # the trained head too
            head, expected = head_from_hf(src.state_dict), {k for k in full if k.startswith(HEAD_PREFIX)}
            if head.keys() != expected:
                raise UserError(f"{src.description}: head weights do not match pooling={cfg.pooling.type}: "
                                f"missing {sorted(expected - head.keys())[:8]}, unexpected {sorted(head.keys() - expected)[:8]}")
            full.update(head)
        model.load_full_state_dict(full, source=src.description)
        model.save_to(out)
    n = sum(p.numel() for p in full.values())
    if distributed.is_global_rank_zero():
        head = "imported" if src.nvembed is not None else "fresh"
        print(f"wrote {out}: {n / 1e6:.1f}M parameters, pooling={cfg.pooling.type} ({head} head), attention={cfg.attention}, "
              f"built with TP={tp} (restores under any TP dividing the head counts)")
