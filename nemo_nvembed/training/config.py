"""The schema of a whole stage config (conf/stage1.yaml, conf/stage2.yaml + overrides): name and
paths, ``parallel``, ``model`` (:class:`~nemo_nvembed.models.config.ModelConfig`), ``train``,
``trainer`` (Lightning Trainer arguments), ``exp_manager`` (NeMo's) and ``hydra``.

The composed config is merged onto ``OmegaConf.structured(StageConfig)`` in struct mode once, at
the start of ``nemo_nvembed.train``, before any weight or data is loaded: a misspelled key anywhere
(``trainer.max_stepz``) fails naming it, and every default lives in the YAML or in this schema.
``trainer.devices``/``trainer.num_nodes`` come from the launcher through the ``${launcher:...}``
resolver registered here (:func:`nemo_nvembed.parallel.distributed.read_env`), so the resolved
config in the run directory records them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nemo_nvembed.checks.schema import merge_onto_schema
from nemo_nvembed.models.config import ConfigError, ModelConfig, validate_model_config
from nemo_nvembed.paths import CONF


# The train section's schema names keys and types only: every value comes from the stage YAML
# (conf/stage1.yaml, stage2.yaml), the one source of defaults. Benchmarks and tests build their
# train config from the same YAML (:func:`stage_train_config`), so they measure and test what runs.
@dataclass
class DataConfig:
    path: str = MISSING  # training JSONL
    tasks: str = MISSING  # task registry YAML (conf/tasks.yaml)
    num_negatives: int = MISSING  # hard negatives per query
    allow_negative_resampling: bool = MISSING  # fewer negatives than asked: error (false) or resample, counted
    weights_from: str = MISSING  # registry | examples
    task_weights: Dict[str, float] = MISSING  # per-task overrides, applied last
    sampling: str = MISSING  # blend | homogeneous
    global_batch_size: int = MISSING  # queries per optimizer step over all DP ranks
    query_max_length: int = MISSING
    doc_max_length: int = MISSING
    seed: int = MISSING
    duplicates: str = MISSING  # error | drop


@dataclass
class LossConfig:
    temperature: float = MISSING
    in_batch_negatives: bool = MISSING  # per-task switches in tasks.yaml


@dataclass
class OptimConfig:
    lr: float = MISSING
    weight_decay: float = MISSING
    betas: List[float] = MISSING
    eps: float = MISSING
    warmup_steps: int = MISSING
    min_lr: float = MISSING  # linear decay ends here at trainer.max_steps
    head_lr_mult: float = MISSING  # the pooling head's learning rate = lr x this
    lora_b_lr_mult: float = MISSING  # LoRA's B matrices' learning rate = lr x this (LoRA+)


@dataclass
class ValidationConfig:
    beir: Optional[str] = MISSING  # BEIR folder scored during training (null: no validation)
    task: Optional[str] = MISSING  # task whose eval_instruction the queries get
    every_n_steps: int = MISSING
    batch_size: int = MISSING


@dataclass
class ChunkingConfig:
    chunk_size: int = MISSING  # sequences per forward chunk at most (0: the whole local batch at once)
    length_aware: bool = MISSING  # chunks group sequences of similar length, trimmed to their longest
    chunk_cost_tokens: int = MISSING  # length-aware cuts minimise padded tokens + this x chunks
    max_chunk_tokens: int = MISSING  # padded tokens per chunk at most (0: no limit)
    grad_cache: bool = MISSING  # embed without gradients, loss, then chunk-wise backward
    packed: bool = MISSING  # sequences end to end in chunks of pack_tokens real tokens (no padding); else padded chunks
    pack_tokens: int = MISSING  # packed: real tokens per chunk at most (the GradCache memory bound)


@dataclass
class DistillConfig:
    embeddings: Optional[str] = MISSING  # a teacher's embeddings of every training text (null: no distillation)
    weight: float = MISSING  # loss = InfoNCE + weight x cross-entropy to the teacher's softmax
    temperature: float = MISSING  # the teacher's cosines / this


@dataclass
class TrainSection:
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    nonfinite_loss: str = MISSING  # error | skip
    max_skipped_fraction: float = MISSING
    frozen_weights_bf16: bool = MISSING  # with trainer.precision bf16-*: the frozen backbone held in bf16
    watchdog_s: float = MISSING  # no progress (step, save, validation) for this long: dump stacks, exit 75; 0: off
    host_memory_trim_every_n_steps: int = MISSING  # glibc malloc_trim after every n-th step (training/host_memory.py); 0: off


def stage_train_config(stage: str = "stage1", overrides=()) -> DictConfig:
    """The validated ``train`` section of ``conf/<stage>.yaml`` with Hydra overrides (``train.`` keys,
    e.g. ``"train.data.path=x.jsonl"``): what a run of that stage trains with. ``train.data.tasks``
    defaults to the repository's ``conf/tasks.yaml`` (the YAML names it relative to the launch directory)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name=stage, overrides=[f"train.data.tasks={CONF / 'tasks.yaml'}", *overrides])
    return validate_train_config(cfg.train, source=f"conf/{stage}.yaml")


def validate_train_config(cfg, source: str = "train config") -> DictConfig:
    merged = merge_onto_schema(TrainSection, cfg, source, ConfigError, key_prefix="train.")
    if merged.data.sampling not in ("blend", "homogeneous"):
        raise ConfigError(f"{source}: train.data.sampling: {merged.data.sampling!r} is not 'blend' or 'homogeneous'")
    if merged.data.weights_from not in ("registry", "examples"):
        raise ConfigError(f"{source}: train.data.weights_from: {merged.data.weights_from!r} is not 'registry' or 'examples'")
    if merged.nonfinite_loss not in ("error", "skip"):
        raise ConfigError(f"{source}: train.nonfinite_loss: {merged.nonfinite_loss!r} is not 'error' or 'skip'")
    if merged.data.duplicates not in ("error", "drop"):
        raise ConfigError(f"{source}: train.data.duplicates: {merged.data.duplicates!r} is not 'error' or 'drop'")
    if merged.watchdog_s < 0:
        raise ConfigError(f"{source}: train.watchdog_s must be >= 0 (0: no watchdog), got {merged.watchdog_s}")
    if merged.host_memory_trim_every_n_steps < 0:
        raise ConfigError(f"{source}: train.host_memory_trim_every_n_steps must be >= 0 (0: never), "
                          f"got {merged.host_memory_trim_every_n_steps}")
    if not 0 <= merged.max_skipped_fraction < 1:
        raise ConfigError(f"{source}: train.max_skipped_fraction must be in [0, 1), got {merged.max_skipped_fraction}")
    for key in ("global_batch_size", "num_negatives", "query_max_length", "doc_max_length"):
        if merged.data[key] < 1:
            raise ConfigError(f"{source}: train.data.{key} must be >= 1, got {merged.data[key]}")
    if not merged.optim.lr > 0:
        raise ConfigError(f"{source}: train.optim.lr must be > 0, got {merged.optim.lr}")
    if merged.optim.min_lr < 0 or merged.optim.min_lr > merged.optim.lr:
        raise ConfigError(f"{source}: train.optim.min_lr must be in [0, train.optim.lr], got {merged.optim.min_lr}")
    for key in ("head_lr_mult", "lora_b_lr_mult"):
        if not merged.optim[key] > 0:
            raise ConfigError(f"{source}: train.optim.{key} must be > 0, got {merged.optim[key]}")
    if merged.optim.warmup_steps < 0 or merged.optim.eps <= 0 or merged.optim.weight_decay < 0:
        raise ConfigError(f"{source}: train.optim: warmup_steps and weight_decay must be >= 0 and eps > 0")
    if merged.validation.every_n_steps < 1 or merged.validation.batch_size < 1:
        raise ConfigError(f"{source}: train.validation.every_n_steps and batch_size must be >= 1")
    if merged.loss.temperature <= 0:
        raise ConfigError(f"{source}: train.loss.temperature must be > 0")
    if merged.chunking.chunk_size < 0:
        raise ConfigError(f"{source}: train.chunking.chunk_size must be >= 0")
    for key in ("chunk_cost_tokens", "max_chunk_tokens"):
        if merged.chunking[key] < 0:
            raise ConfigError(f"{source}: train.chunking.{key} must be >= 0")
    if merged.chunking.packed and merged.chunking.pack_tokens < 1:
        raise ConfigError(f"{source}: train.chunking.pack_tokens must be >= 1 with train.chunking.packed=true")
    if merged.distill.weight < 0 or merged.distill.temperature <= 0:
        raise ConfigError(f"{source}: train.distill: weight must be >= 0 and temperature > 0, got "
                          f"{merged.distill.weight} and {merged.distill.temperature}")
    if merged.validation.beir and not merged.validation.task:
        raise ConfigError(f"{source}: train.validation.task is required when train.validation.beir is set")
    return merged


# ---------------------------------------------------------------------------------------- the whole stage
@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = MISSING
    collective_timeout_s: float = MISSING  # every process group's timeout (NCCL and gloo)


@dataclass
class TrainerConfig:
    """The Lightning ``Trainer`` arguments a stage may set (passed to it as they are); values in the YAML."""

    accelerator: str = MISSING
    devices: Any = MISSING  # ${launcher:local_world_size}
    num_nodes: int = MISSING  # ${launcher:num_nodes}
    max_steps: int = MISSING
    precision: str = MISSING
    gradient_clip_val: Optional[float] = MISSING
    accumulate_grad_batches: int = 1  # must be 1: a step is one global batch (in-batch negatives span it)
    log_every_n_steps: int = MISSING
    logger: bool = MISSING
    enable_checkpointing: bool = MISSING
    use_distributed_sampler: bool = MISSING
    limit_val_batches: float = MISSING
    num_sanity_val_steps: int = MISSING
    enable_model_summary: bool = MISSING
    enable_progress_bar: bool = MISSING


@dataclass
class CheckpointCallbackParams:
    monitor: str = MISSING
    mode: str = MISSING
    save_top_k: int = MISSING
    save_last: bool = MISSING
    every_n_train_steps: int = MISSING
    every_n_epochs: Optional[int] = MISSING
    save_nemo_on_train_end: bool = MISSING
    always_save_nemo: bool = MISSING
    filename: str = MISSING


@dataclass
class ExpManagerSection:
    """The ``exp_manager`` keys a stage sets (NeMo's exp_manager receives them as they are); values in the YAML."""

    explicit_log_dir: str = MISSING
    resume_if_exists: bool = MISSING  # false: resuming is ours (StageConfig.resume, training/resume.py)
    create_tensorboard_logger: bool = MISSING
    create_checkpoint_callback: bool = MISSING
    checkpoint_callback_params: CheckpointCallbackParams = field(default_factory=CheckpointCallbackParams)
    create_preemption_callback: bool = MISSING
    log_step_timing: bool = MISSING
    log_tflops_per_sec_per_gpu: bool = MISSING


@dataclass
class StageConfig:
    name: str = MISSING
    run_root: str = MISSING
    init_from: str = MISSING  # a .nemo: the converted base model (stage 1) or stage 1's result (stage 2)
    output_nemo: str = MISSING
    resume: str = MISSING  # auto: the newest verified checkpoint | fresh: step 0, old checkpoints moved aside
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    model: ModelConfig = field(default_factory=ModelConfig)  # must describe init_from (runtime keys aside)
    train: TrainSection = field(default_factory=TrainSection)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    exp_manager: ExpManagerSection = field(default_factory=ExpManagerSection)
    hydra: Optional[Any] = None  # Hydra's own settings (Hydra validates them)


def _launcher(key: str):
    from nemo_nvembed.parallel import distributed

    return getattr(distributed.read_env(), key)


OmegaConf.register_new_resolver("launcher", _launcher, replace=True)


def validate_stage_config(cfg) -> DictConfig:
    """The composed stage config -> the typed, resolved, struct-mode config; ConfigError naming the key."""
    name = OmegaConf.select(cfg, "name") if isinstance(cfg, DictConfig) else cfg["name"]
    try:
        raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(f"stage {name}: {e}") from None
    # model.* may stay unset here: init_from's saved config supplies the architecture (stage.check_architecture)
    merged = merge_onto_schema(StageConfig, raw, f"stage {name}", ConfigError, require_complete=False)
    missing = sorted(k for k in OmegaConf.missing_keys(merged) if not k.startswith("model."))
    if missing:
        raise ConfigError(f"stage {name}: required key(s) not set: {', '.join(missing)}")
    validate_model_config(merged.model, source=f"{name}: model", require_complete=False)
    validate_train_config(merged.train, source=f"{name}: train")
    check_stage_values(merged, source=str(name))
    if merged.trainer.accumulate_grad_batches != 1:
        raise ConfigError("trainer.accumulate_grad_batches must be 1: a step is one global batch (in-batch negatives "
                          "span all of it); use train.chunking.grad_cache=true to fit large batches")
    return merged


RESUME_MODES = ("auto", "fresh")


def check_stage_values(cfg, source: str) -> None:
    """Values outside ``train``/``model`` that would otherwise fail late or obscurely: the TP size,
    the stage length, the resume mode. Part of :func:`validate_stage_config`, before anything heavy."""
    tp = cfg.parallel.tensor_model_parallel_size
    if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
        raise ConfigError(f"{source}: parallel.tensor_model_parallel_size must be an integer >= 1, got {tp!r}")
    steps = cfg.trainer.max_steps
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError(f"{source}: trainer.max_steps must be an integer >= 1, got {steps!r} "
                          f"(a stage of 0 steps would write an untrained .nemo)")
    timeout, watchdog = cfg.parallel.collective_timeout_s, cfg.train.watchdog_s
    if not timeout > 0:
        raise ConfigError(f"{source}: parallel.collective_timeout_s must be > 0, got {timeout}")
    if watchdog and timeout <= watchdog:
        raise ConfigError(f"{source}: parallel.collective_timeout_s={timeout:g} must exceed train.watchdog_s={watchdog:g}: "
                          f"the watchdog names the hung step and phase, a collective timeout only fails a collective")
    if cfg.resume not in RESUME_MODES:
        raise ConfigError(f"{source}: resume: {cfg.resume!r} is not one of {RESUME_MODES}")
