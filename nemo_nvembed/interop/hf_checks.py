"""Refuse a Hugging Face source whose config.json and weights disagree, before a model is built.

``convert from-hf`` used to build whatever config.json described from whichever tensors matched:
a config declaring 1 layer for 2 stored gave a truncated model without a word. Here every backbone
tensor the config implies must be present with the implied shape, and every stored backbone tensor
must be used; the error names the tensors and the source.
"""
from __future__ import annotations

from nemo_nvembed.checks.errors import UserError
from nemo_nvembed.interop.hf_import import HF_HEAD_PREFIX, backbone_config

# Stored by some checkpoints, never part of the backbone we build: the LM head and RoPE caches.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
IGNORED_NAMES = ("lm_head.weight",)
LISTED = 8


def checked_backbone_config(config: dict, source: str) -> dict:
    """:func:`backbone_config`, with a missing or malformed key named instead of a KeyError."""
    try:
        return backbone_config(config)
    except KeyError as e:
        raise UserError(f"{source}: config.json has no {e.args[0]!r} (needed for the backbone)") from None
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise UserError(f"{source}: config.json: {e}") from None


def expected_shapes(b: dict) -> dict[str, tuple[int, ...]]:
    """HF backbone tensor name (without the ``model.`` prefix) -> shape, from our backbone section."""
    h, heads, groups, ffn = b["hidden_size"], b["num_attention_heads"], b["num_query_groups"], b["ffn_hidden_size"]
    dh = h // heads
    out = {"embed_tokens.weight": (b["vocab_size"], h), "norm.weight": (h,)}
    for i in range(b["num_layers"]):
        p = f"layers.{i}."
        out.update({
            p + "self_attn.q_proj.weight": (heads * dh, h), p + "self_attn.k_proj.weight": (groups * dh, h),
            p + "self_attn.v_proj.weight": (groups * dh, h), p + "self_attn.o_proj.weight": (h, heads * dh),
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "mlp.gate_proj.weight": (ffn, h), p + "mlp.up_proj.weight": (ffn, h), p + "mlp.down_proj.weight": (h, ffn),
        })
    return out


def _strip(name: str) -> str:
    for prefix in ("model.", "embedding_model."):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def check_backbone_tensors(state_dict: dict, b: dict, source: str) -> None:
    """Every tensor config.json implies is stored with its shape, and every stored one is used."""
    want = expected_shapes(b)
    have = {_strip(k): tuple(v.shape) for k, v in state_dict.items()
            if not k.startswith(HF_HEAD_PREFIX) and k not in IGNORED_NAMES and not k.endswith(IGNORED_SUFFIXES)}
    problems = []
    missing = sorted(set(want) - set(have))
    unused = sorted(set(have) - set(want))
    if missing:
        problems.append(f"missing {len(missing)} tensor(s) config.json implies: {', '.join(missing[:LISTED])}"
                        + (" ..." if len(missing) > LISTED else ""))
    if unused:
        problems.append(f"{len(unused)} stored tensor(s) config.json does not account for: {', '.join(unused[:LISTED])}"
                        + (" ..." if len(unused) > LISTED else ""))
    shapes = [f"{k} is {have[k]}, config.json implies {want[k]}" for k in sorted(set(want) & set(have)) if have[k] != want[k]]
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): " + "; ".join(shapes[:LISTED]) + (" ..." if len(shapes) > LISTED else ""))
    if problems:
        raise UserError(f"{source}: config.json (num_hidden_layers={b['num_layers']}, hidden_size={b['hidden_size']}) "
                        f"and the weights disagree:\n  " + "\n  ".join(problems))
