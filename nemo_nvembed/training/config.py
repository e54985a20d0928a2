"""Schema of a stage config's ``train`` section (conf/stage1.yaml, conf/stage2.yaml).

Validated in struct mode like the model config, so a misspelled key fails with its name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nemo_nvembed.models.config import ConfigError


@dataclass
class DataConfig:
    path: str = MISSING  # training JSONL
    tasks: str = MISSING  # task registry YAML (conf/tasks.yaml)
    num_negatives: int = 7  # hard negatives per query (paper: 7)
    allow_negative_resampling: bool = False  # fewer negatives than asked: error (default) or resample, counted
    weights_from: str = "registry"  # registry: tasks.yaml weights (Table 6 counts); examples: examples present per task
    task_weights: Dict[str, float] = field(default_factory=dict)  # per-task overrides, applied last
    sampling: str = "blend"  # blend: every batch mixes tasks by weight (paper, stage 2); homogeneous: one task per batch
    global_batch_size: int = 128  # queries per optimizer step over all DP ranks (paper: 128)
    query_max_length: int = 512
    doc_max_length: int = 512
    seed: int = 1234


@dataclass
class LossConfig:
    temperature: float = 0.02
    in_batch_negatives: bool = True  # stage 1: true; stage 2: false. Per-task switches in tasks.yaml


@dataclass
class OptimConfig:
    lr: float = MISSING
    weight_decay: float = 0.03
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1.0e-8
    warmup_steps: int = 500
    min_lr: float = 0.0  # linear decay ends here at trainer.max_steps


@dataclass
class ValidationConfig:
    beir: Optional[str] = None  # BEIR folder scored during training (null: no validation)
    task: Optional[str] = None  # task whose eval_instruction the queries get
    every_n_steps: int = 1000
    batch_size: int = 32


@dataclass
class ChunkingConfig:
    chunk_size: int = 0  # at most this many sequences per forward chunk (0: the whole local batch at once)
    length_aware: bool = True  # chunks group sequences of similar length, trimmed to their longest
    chunk_cost_tokens: int = 64  # length-aware cuts minimise padded tokens + this x chunks (price of a forward call)
    max_chunk_tokens: int = 0  # at most this many padded tokens per chunk (0: no limit): bounds GradCache memory
    grad_cache: bool = False  # embed without gradients, loss, then chunk-wise backward (memory: one chunk)


@dataclass
class TrainSection:
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    nonfinite_loss: str = "error"  # error: stop naming the step; skip: skip the step, counted


def validate_train_config(cfg, source: str = "train config") -> DictConfig:
    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainSection), raw)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: {e}") from None
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise ConfigError(f"{source}: required values are missing: {', '.join('train.' + m for m in missing)}")
    if merged.data.sampling not in ("blend", "homogeneous"):
        raise ConfigError(f"{source}: train.data.sampling: {merged.data.sampling!r} is not 'blend' or 'homogeneous'")
    if merged.data.weights_from not in ("registry", "examples"):
        raise ConfigError(f"{source}: train.data.weights_from: {merged.data.weights_from!r} is not 'registry' or 'examples'")
    if merged.nonfinite_loss not in ("error", "skip"):
        raise ConfigError(f"{source}: train.nonfinite_loss: {merged.nonfinite_loss!r} is not 'error' or 'skip'")
    if merged.loss.temperature <= 0:
        raise ConfigError(f"{source}: train.loss.temperature must be > 0")
    if merged.chunking.chunk_size < 0:
        raise ConfigError(f"{source}: train.chunking.chunk_size must be >= 0")
    for key in ("chunk_cost_tokens", "max_chunk_tokens"):
        if merged.chunking[key] < 0:
            raise ConfigError(f"{source}: train.chunking.{key} must be >= 0")
    if merged.validation.beir and not merged.validation.task:
        raise ConfigError(f"{source}: train.validation.task is required when train.validation.beir is set")
    return merged
