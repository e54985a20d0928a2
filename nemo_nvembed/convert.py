"""``python -m nemo_nvembed.convert from-hf SRC --out model.nemo [--tp N] [overrides]``

SRC is a Hugging Face folder (config.json + safetensors + tokenizer), a GGUF file, or
``smollm2`` (the packaged SmolLM2-135M-Instruct). The backbone section of the model config comes
from SRC; pooling, LoRA, attention and text handling come from ``--model-config`` (default:
``smollm2_135m`` for ``smollm2``, ``mistral_7b`` otherwise) plus Hydra-style overrides such as
``model.pooling.type=mean model.attention=causal``. The pooling head and LoRA start freshly
initialised.

SRC may also be a folder in NV-Embed-v2's layout (a released NV-Embed-v2 checkpoint, or what
``python -m nemo_nvembed.export hf`` writes): ``config.json`` with ``text_config`` (the backbone)
and ``latent_attention_config`` (the head). Then the backbone AND the head weights are loaded, the
pooling section comes from ``latent_attention_config`` (latent attention; ``num_latents``,
``num_heads``, ``dim_head``, ``normalize``; ``ff_mult`` from the weights), and only LoRA starts
fresh (B = 0, so the imported model computes exactly what the checkpoint does). Our exporter's
extra fields (``pooling`` for mean/eos exports, ``attention``, ``query_template``, ``max_length``)
are honoured when present; overrides still apply last.

The ``.nemo`` stores weights in the TP=1 layout and restores under any TP size;
``--tp N`` checks that the model can run with N tensor-parallel ranks (and builds it sharded when
started with N processes under torchrun or srun).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile

from omegaconf import OmegaConf

from nemo_nvembed.checks import paths as checks
from nemo_nvembed.checks.errors import UserError, exit_on_user_error

from nemo_nvembed.models.config import check_parallel_layout, validate_model_config
from nemo_nvembed.paths import model_config_path


def parse_overrides(overrides: list[str]):
    """``model.a.b=v`` (or ``a.b=v``) -> a DictConfig to merge onto the model config."""
    dotlist = []
    for o in overrides:
        if "=" not in o:
            raise SystemExit(f"override {o!r} is not key=value")
        key, value = o.split("=", 1)
        dotlist.append(f"{key.removeprefix('model.')}={value}")
    return OmegaConf.from_dotlist(dotlist)


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-6)
    return a == b


def nvembed_sections(nv: dict, state_dict, bcfg: dict) -> dict:
    """Model-config sections (pooling, attention, text handling) of an NV-Embed-v2-layout folder."""
    from nemo_nvembed.interop.hf_import import nvembed_pooling_config

    if nv.get("padding_side", "right") != "right" or not nv.get("add_eos", True) or not nv.get("is_mask_instruction", True):
        print(f"note: the source says padding_side={nv.get('padding_side')!r}, add_eos={nv.get('add_eos')}, "
              f"is_mask_instruction={nv.get('is_mask_instruction')}; this model always pads right, appends EOS "
              f"and leaves the instruction out of the pooled mean")
    out = {"pooling": nvembed_pooling_config(nv, state_dict, bcfg["hidden_size"])}
    for key in ("attention", "query_template", "max_length"):  # written by nemo_nvembed.export; absent in releases
        if key in nv:
            out[key] = nv[key]
    return out


def build_config(src_backbone: dict, tok_cfg: dict, tokenizer_file: str, base: str, overrides: list[str],
                 sections: dict | None = None):
    path = model_config_path(base)
    cfg = OmegaConf.load(path)
    for key, value in src_backbone.items():
        old = OmegaConf.select(cfg, f"backbone.{key}")
        if old is not None and not _same(old, value):
            print(f"note: backbone.{key}: {path.name} says {old}, the source says {value}; using the source")
    cfg.backbone = OmegaConf.merge(cfg.backbone, src_backbone)
    cfg.tokenizer = OmegaConf.merge(cfg.tokenizer, tok_cfg, {"file": tokenizer_file})
    if sections:
        cfg = OmegaConf.merge(cfg, sections)
    cfg = OmegaConf.merge(cfg, parse_overrides(overrides))
    return validate_model_config(cfg, source=f"{path} + overrides")


def from_hf(args) -> None:
    from nemo_nvembed.parallel import distributed
    from nemo_nvembed.interop.hf_checks import check_backbone_tensors, checked_backbone_config
    from nemo_nvembed.interop.hf_import import (HEAD_PREFIX, head_from_hf, hf_to_megatron, load_source,
                                        tokenizer_config)

    src = load_source(args.src)
    print(f"loaded {src.description}")
    base = args.model_config or ("smollm2_135m" if args.src == "smollm2" else "mistral_7b")
    with tempfile.TemporaryDirectory() as tmp:
        tok_file = os.path.join(tmp, "tokenizer.json")
        src.tokenizer.backend_tokenizer.save(tok_file)
        bcfg = checked_backbone_config(src.config, src.description)
        check_backbone_tensors(src.state_dict, bcfg, src.description)
        sections = None if src.nvembed is None else nvembed_sections(src.nvembed, src.state_dict, bcfg)
        cfg = build_config(bcfg, tokenizer_config(src.tokenizer), tok_file, base, args.overrides, sections)
        check_parallel_layout(cfg, args.tp, source=f"--tp {args.tp}")
        world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))
        tp = args.tp if world % args.tp == 0 and world >= args.tp else 1
        distributed.initialize(tp, seed=cfg.seed)
        from nemo_nvembed.models.nvembed import NVEmbedModel

        model = NVEmbedModel(cfg)
        full = model.full_state_dict()
        full.update(hf_to_megatron(src.state_dict, bcfg))
        if src.nvembed is not None:  # the trained head too
            head, expected = head_from_hf(src.state_dict), {k for k in full if k.startswith(HEAD_PREFIX)}
            if head.keys() != expected:
                raise UserError(f"{src.description}: head weights do not match pooling={cfg.pooling.type}: "
                               f"missing {sorted(expected - head.keys())[:8]}, unexpected {sorted(head.keys() - expected)[:8]}")
            full.update(head)
        model.load_full_state_dict(full, source=src.description)
        model.save_to(args.out)
    n = sum(p.numel() for p in full.values())
    if distributed.is_global_rank_zero():
        head = "imported" if src.nvembed is not None else "fresh"
        print(f"wrote {args.out}: {n / 1e6:.1f}M parameters, pooling={cfg.pooling.type} ({head} head), attention={cfg.attention}, "
              f"built with TP={tp} (restores under any TP dividing the head counts)")


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m nemo_nvembed.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("from-hf", help="import Hugging Face Mistral/Llama weights into a .nemo")
    f.add_argument("src", help="HF folder (plain Mistral/Llama or NV-Embed-v2 layout), .gguf file, or 'smollm2'")
    f.add_argument("--out", required=True, help="output .nemo path")
    f.add_argument("--tp", type=int, default=1, help="tensor-parallel size to validate/build for")
    f.add_argument("--model-config", default=None, help="conf/model name or YAML path for the non-backbone sections")
    f.epilog = "Any further key=value arguments are Hydra-style overrides, e.g. model.pooling.type=mean"
    args, extra = p.parse_known_args(argv)
    bad = [x for x in extra if x.startswith("-") or "=" not in x]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = extra
    checks.positive("--tp", args.tp)
    checks.output_file(args.out, "--out")
    if args.cmd == "from-hf":
        from_hf(args)


if __name__ == "__main__":
    sys.exit(main())
