"""The model configuration schema: one visible place where YAML is validated.

YAML is merged onto ``OmegaConf.structured(ModelConfig)`` in struct mode (lingua's habit), so a
misspelled key fails loudly with its name, and every default lives here or in the YAML, not in
``cfg.get(key, default)`` calls scattered through the code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from nemo_nvembed.checks.errors import UserError
from nemo_nvembed.checks.schema import merge_onto_schema
from nemo_nvembed.models.pooling import POOLINGS, pooling_type
from nemo_nvembed.models.text import POOL_SPANS
from nemo_nvembed.parallel import DEFAULT_SEED

ATTENTION_TYPES = ("bidirectional", "causal")
LORA_TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")

# Keys NeMo's ModelPT adds to a model config on its own; they are not ours to validate.
_NEMO_KEYS = ("target", "nemo_version", "nvembed_class", "nvembed_format", "nvembed_weights_sha256")


@dataclass
class BackboneConfig:
    family: str = MISSING  # "mistral" or "llama": names the HF architecture for import/export
    num_layers: int = MISSING
    hidden_size: int = MISSING
    num_attention_heads: int = MISSING
    num_query_groups: int = MISSING  # KV heads (GQA)
    ffn_hidden_size: int = MISSING
    vocab_size: int = MISSING
    max_position_embeddings: int = MISSING
    rope_theta: float = MISSING
    norm_eps: float = MISSING
    tie_word_embeddings: bool = MISSING  # recorded for export; the LM head is never built
    init_std: float = 0.02


@dataclass
class PoolingConfig:
    type: str = "latent_attention"
    num_latents: int = 512
    num_heads: int = 8
    dim_head: int = MISSING
    ff_mult: int = 4
    normalize: bool = True


@dataclass
class LoRAConfig:
    enabled: bool = True
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.1
    target_modules: List[str] = field(default_factory=lambda: list(LORA_TARGETS))
    first_layer: int = 0  # adapters on layers first_layer.. only; the frozen layers below need no backward


@dataclass
class TokenizerConfig:
    file: str = MISSING  # a Hugging Face tokenizer.json (packed into the .nemo as an artifact)
    bos_token: Optional[str] = None
    eos_token: str = MISSING
    pad_token: Optional[str] = None  # defaults to EOS at load time when null (right padding)
    add_bos: bool = False


@dataclass
class RecomputeConfig:
    granularity: Optional[str] = None  # null (off) | full | selective (megatron-core's recompute settings)
    method: Optional[str] = "uniform"  # full: uniform | block
    num_layers: Optional[int] = 1  # full: layers per recomputed unit (uniform) or recomputed layers (block)


@dataclass
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    attention: str = "bidirectional"
    pooling: PoolingConfig = field(default_factory=PoolingConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    recompute: RecomputeConfig = field(default_factory=RecomputeConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    max_length: int = 512
    query_template: str = "Instruct: {instruction}\nQuery: "
    sequence_parallel: bool = False  # runtime (stage config): megatron's SP with TP > 1 on GPUs; off until run there
    pool_span: str = "exact"  # exact | nvembed_v2 (the released NV-Embed-v2 client's convention); see models/text.py
    seed: int = DEFAULT_SEED


class ConfigError(UserError):
    """A configuration value or key is wrong; the message names the file or field."""


def validate_model_config(cfg, source: str = "model config", require_complete: bool = True) -> DictConfig:
    """Merge ``cfg`` onto the schema, check values, and return the typed, struct-mode config.

    ``source`` names the file or object the config came from so errors can point at it.
    """
    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    for key in _NEMO_KEYS:
        raw.pop(key, None)
    merged = merge_onto_schema(ModelConfig, raw, source, ConfigError, require_complete=require_complete)
    _check_values(merged, source)
    return merged


def _check_values(cfg: DictConfig, source: str) -> None:
    def bad(field_name: str, msg: str):
        raise ConfigError(f"{source}: {field_name}: {msg}")

    if cfg.attention not in ATTENTION_TYPES:
        bad("attention", f"{cfg.attention!r} is not one of {ATTENTION_TYPES}")
    if cfg.pooling.type not in POOLINGS:
        bad("pooling.type", f"{cfg.pooling.type!r} is not one of {tuple(POOLINGS)}")
    if cfg.backbone.family not in ("mistral", "llama", "???"):
        bad("backbone.family", f"{cfg.backbone.family!r} is not 'mistral' or 'llama'")
    for name in cfg.lora.target_modules:
        if name not in LORA_TARGETS:
            bad("lora.target_modules", f"{name!r} is not one of {LORA_TARGETS}")
    if cfg.recompute.granularity not in (None, "full", "selective"):
        bad("recompute.granularity", f"{cfg.recompute.granularity!r} is not null, 'full' or 'selective'")
    if cfg.recompute.granularity == "full" and cfg.recompute.method not in ("uniform", "block"):
        bad("recompute.method", f"{cfg.recompute.method!r} is not 'uniform' or 'block'")
    if cfg.pool_span not in POOL_SPANS:
        bad("pool_span", f"{cfg.pool_span!r} is not one of {POOL_SPANS}")
    if "{instruction}" not in cfg.query_template:
        bad("query_template", "must contain '{instruction}'")
    if cfg.max_length < 2:
        bad("max_length", f"must be >= 2 (a token of text and EOS), got {cfg.max_length}")
    if cfg.lora.enabled and cfg.lora.rank < 1:
        bad("lora.rank", f"must be >= 1, got {cfg.lora.rank}")
    if not OmegaConf.is_missing(cfg.backbone, "num_layers") and not 0 <= cfg.lora.first_layer < cfg.backbone.num_layers:
        bad("lora.first_layer", f"must be in [0, backbone.num_layers={cfg.backbone.num_layers}), "
                                f"got {cfg.lora.first_layer}")
    if not 0 <= cfg.lora.dropout < 1:
        bad("lora.dropout", f"must be in [0, 1), got {cfg.lora.dropout}")
    for key in ("num_latents", "num_heads", "ff_mult"):
        if cfg.pooling[key] < 1:
            bad(f"pooling.{key}", f"must be >= 1, got {cfg.pooling[key]}")
    for key in ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size",
                "vocab_size", "max_position_embeddings"):
        if not OmegaConf.is_missing(cfg.backbone, key) and cfg.backbone[key] < 1:
            bad(f"backbone.{key}", f"must be >= 1, got {cfg.backbone[key]}")
    b = cfg.backbone
    if not OmegaConf.is_missing(b, "num_attention_heads") and not OmegaConf.is_missing(b, "num_query_groups"):
        if b.num_attention_heads % b.num_query_groups:
            bad("backbone.num_query_groups", "must divide num_attention_heads")
        if not OmegaConf.is_missing(b, "hidden_size") and b.hidden_size % b.num_attention_heads:
            bad("backbone.hidden_size", "must be a multiple of num_attention_heads")


def check_parallel_layout(cfg: DictConfig, tp: int, pp: int = 1, source: str = "model config") -> None:
    """Fail before any weight is built if this model cannot run with this parallel layout."""
    if pp != 1:
        raise ConfigError(f"pipeline_model_parallel_size={pp}: only 1 is supported (tensor + data parallel)")
    if tp < 1:
        raise ConfigError(f"tensor_model_parallel_size={tp}: must be >= 1")
    b, p = cfg.backbone, cfg.pooling
    checks = {
        "backbone.num_attention_heads": b.num_attention_heads,
        "backbone.num_query_groups": b.num_query_groups,
        "backbone.ffn_hidden_size": b.ffn_hidden_size,
        "backbone.vocab_size": b.vocab_size,
    }
    checks.update(pooling_type(p.type).tp_divisible(p))
    for name, value in checks.items():
        if value % tp:
            raise ConfigError(
                f"{source}: {name}={value} is not divisible by tensor_model_parallel_size={tp}; "
                f"choose a TP size that divides it"
            )
