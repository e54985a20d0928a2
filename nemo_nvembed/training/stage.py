"""One NV-Embed training stage, NeMo's recipe shape: stage config validated (one schema,
:mod:`nemo_nvembed.training.config`) -> parallel state -> model from ``init_from`` (a .nemo: the
converted base model for stage 1, stage 1's result for stage 2) -> Trainer with the TP x DP
strategy -> ``exp_manager`` (TensorBoard, checkpoints) -> ``fit`` -> ``<name>.nemo``. Config,
``init_from``'s config and the training data are checked before any weight loads; one run holds
the run folder at a time (:mod:`run_lock`). Relaunching the same command resumes from the newest
checkpoint whose manifest verifies (:mod:`resume`, ``resume: auto|fresh``); once the stage's
``.nemo`` exists, relaunching is a no-op.

Every stop is one line. A user error (config, layout, data) is a :class:`ConfigError` raised before
any weight loads, the same on every rank; a runtime stop (non-finite loss under
``train.nonfinite_loss=error``, too many skipped steps, a failed ``.nemo`` write) is a
:class:`StageStopped` naming the step and what to do, its traceback written to the run folder's
``stop_rank<r>.log``. The command (``nemo_nvembed.train``) prints either once, on rank 0.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from nemo_nvembed.checks.schema import config_diff
from nemo_nvembed.models.config import ConfigError, validate_model_config
from nemo_nvembed.training.config import validate_stage_config

STOP_EXIT = 3  # a runtime stop (StageStopped): a restart would stop the same way, so nothing requeues it


class StageStopped(RuntimeError):
    """Training stopped; the message names the step and the next action. ``status`` is the exit status:
    STOP_EXIT when a restart would stop the same way (non-finite loss, too many skipped steps, the .nemo
    not written), 1 for another I/O error (it may pass: the Slurm launch may requeue it)."""

    def __init__(self, message: str, status: int = STOP_EXIT):
        super().__init__(message)
        self.status = status


class NemoWriteFailed(RuntimeError):
    """The final ``.nemo`` could not be written (full disk, read-only folder)."""


ARCH_KEYS = ("backbone", "attention", "pooling", "lora", "max_length", "query_template", "pool_span", "tokenizer")


def check_architecture(saved, wanted, init_from: str) -> None:
    """The stage config's model section must describe the model in ``init_from`` (the YAML is what ran)."""
    # The saved config on the schema: a .nemo written before a key existed gets that key's default
    # (pool_span: exact, lora.first_layer: 0), as restoring it would.
    s = OmegaConf.to_container(validate_model_config(saved, init_from, require_complete=False), resolve=True)
    w = OmegaConf.to_container(wanted, resolve=True)
    for d in (s, w):
        d.get("tokenizer", {}).pop("file", None)
    diffs = [x for k in ARCH_KEYS for x in config_diff(s.get(k), w.get(k), f"{k}.")]
    if diffs:
        lines = "\n".join(f"  model.{k}: {init_from} has {a!r}, the config says {b!r}" for k, a, b in diffs)
        raise ConfigError(f"the stage config's model section does not match {init_from}:\n{lines}\n"
                          f"override the config (or convert the base model with the same settings)")


def check_layout(cfg, saved, world_size: int) -> None:
    """The parallel layout, checked before any weight or data loads (ConfigError naming the key): world
    size vs TP, init_from's heads/groups/ffn/vocab/pooling heads vs TP, the global batch vs DP."""
    from nemo_nvembed.models.config import check_parallel_layout

    tp, data = cfg.parallel.tensor_model_parallel_size, cfg.train.data
    if world_size % tp:
        raise ConfigError(f"parallel.tensor_model_parallel_size={tp} does not divide the world size {world_size} "
                          f"(processes launched); launch a multiple of {tp} processes or choose a TP size that divides {world_size}")
    check_parallel_layout(saved, tp, source=f"parallel.tensor_model_parallel_size={tp} with init_from's model")
    if cfg.train.chunking.packed and cfg.model.get("sequence_parallel", False) and tp > 1:
        raise ConfigError("train.chunking.packed=true runs megatron's THD layout, which our network does not run with "
                          "model.sequence_parallel=true; set train.chunking.packed=false or model.sequence_parallel=false")
    dp = world_size // tp
    if data.global_batch_size % dp:
        raise ConfigError(f"train.data.global_batch_size={data.global_batch_size} is not divisible by the "
                          f"data-parallel size {dp} (world size {world_size} / TP {tp}); choose a multiple of {dp}")


def check_lengths(cfg, saved, tokenizer, registry, tasks) -> None:
    """``query_max_length``/``doc_max_length`` must leave room for text after the instruction prefix of
    every task in ``tasks`` (those in the data) and of the validation task: the encoder's own rule."""
    from nemo_nvembed.models.text import TextEncoder

    data = cfg.train.data
    text = TextEncoder(tokenizer, saved.query_template, saved.tokenizer.add_bos, saved.max_length, saved.pool_span)
    instructions = {name: registry[name].train_instruction for name in tasks}
    if cfg.train.validation.beir and cfg.train.validation.task in registry:
        instructions[f"{cfg.train.validation.task} (validation)"] = registry[cfg.train.validation.task].eval_instruction
    for key, length, what in [("query_max_length", data.query_max_length, instructions),
                              ("doc_max_length", data.doc_max_length, {"documents": None})]:
        for name, instruction in what.items():
            try:
                text.encode_one("x", instruction, length)
            except ValueError as e:  # "instruction prefix is N tokens; max_length=M leaves no room for text"
                raise ConfigError(f"train.data.{key}={length} leaves no room for text after the instruction of "
                                  f"{name} ({e}); raise train.data.{key}") from None


def check(cfg: DictConfig, world_size: int) -> None:
    """What a launch of ``world_size`` processes would refuse before spawning them: the config, init_from's
    config and the layout (``python -m nemo_nvembed.train --nproc-per-node N``). The data and the lengths
    (which need the tasks in the data) are checked by the workers, still before any weight."""
    from nemo_nvembed.models.checkpoint import read_config

    cfg = validate_stage_config(cfg)
    if Path(cfg.output_nemo).exists():
        return
    if not Path(cfg.init_from).is_file():
        raise ConfigError(f"init_from: no .nemo at {cfg.init_from}")
    saved = read_config(cfg.init_from)
    check_architecture(saved, cfg.model, cfg.init_from)
    check_layout(cfg, saved, world_size)


def run(cfg: DictConfig) -> Path | None:
    """One stage (``python -m nemo_nvembed.train``): validate the config and data, lock the run folder,
    choose the checkpoint to resume from, restore ``init_from``, fit, save."""
    from nemo_nvembed.data.jsonl import load_examples
    from nemo_nvembed.data.tasks import TaskRegistry
    from nemo_nvembed.models.checkpoint import read_config, tokenizer_from_nemo
    from nemo_nvembed.parallel import distributed
    from nemo_nvembed.training.run_lock import RunLock

    cfg = validate_stage_config(cfg)  # once, before any weight or data is loaded
    tcfg, mcfg = cfg.train, cfg.model
    out = Path(cfg.output_nemo)
    env = distributed.read_env()
    rank0 = env.rank == 0
    if out.exists():
        if rank0:
            print(f"{out} exists: stage {cfg.name} already finished, nothing to do")
        return out
    if not Path(cfg.init_from).is_file():
        raise ConfigError(f"init_from: no .nemo at {cfg.init_from}")

    # Config and data are checked before any weight is restored: init_from's config and tokenizer only.
    saved = read_config(cfg.init_from)
    check_architecture(saved, mcfg, cfg.init_from)
    registry = TaskRegistry.from_yaml(tcfg.data.tasks)
    tok = tokenizer_from_nemo(cfg.init_from, saved)
    check_layout(cfg, saved, env.world_size)
    loaded = load_examples(
        tcfg.data.path, registry, tcfg.data.num_negatives, tcfg.data.allow_negative_resampling, tcfg.data.seed,
        count_tokens=lambda t: len(tok(t, add_special_tokens=False)["input_ids"]),
        max_length=max(tcfg.data.query_max_length, tcfg.data.doc_max_length) - 2,
        duplicates=tcfg.data.duplicates,
    )
    check_lengths(cfg, saved, tok, registry, loaded.summary.examples_per_task)
    teacher = None
    if tcfg.distill.embeddings:
        from nemo_nvembed.data.teacher import TeacherTable

        teacher = TeacherTable(tcfg.distill.embeddings)
        teacher.check(loaded.examples, tcfg.data.path)
    if rank0:
        print(loaded.summary.format(), flush=True)
        if teacher is not None:
            print(f"distillation: {teacher.model} vectors ({teacher.path}), weight {tcfg.distill.weight}, "
                  f"temperature {tcfg.distill.temperature}", flush=True)

    tp = cfg.parallel.tensor_model_parallel_size
    distributed.initialize(tp, seed=mcfg.seed, timeout_s=cfg.parallel.collective_timeout_s)
    run_dir = Path(cfg.exp_manager.explicit_log_dir)
    lock = distributed.decided_on_rank0(lambda: RunLock(run_dir, distributed.slurm_job_id()).acquire())
    if rank0 and lock.taken_over:
        print(lock.taken_over, flush=True)
    try:
        return _train(cfg, saved, registry, loaded, run_dir, env, out, teacher)
    except (FloatingPointError, NemoWriteFailed, OSError) as e:
        # Runtime stops: one line on the terminal (the command prints it), the traceback in the run folder.
        raise _stopped(e, run_dir, env.rank) from None
    finally:
        if rank0:
            lock.release()


def _train(cfg, saved, registry, loaded, run_dir: Path, env, out: Path, teacher=None) -> Path | None:
    """The stage once its inputs are checked and the run folder is ours."""
    import lightning.pytorch as pl
    from nemo.utils.exp_manager import exp_manager

    from nemo_nvembed.data.sampler import GlobalBatchSampler
    from nemo_nvembed.data.weights import sampling_registry
    from nemo_nvembed.models.network import NVEmbedNetwork
    from nemo_nvembed.parallel import distributed
    from nemo_nvembed.training import resume
    from nemo_nvembed.training.callbacks import RetrievalValidation
    from nemo_nvembed.training.checkpoint_io import ManifestCheckpointIO
    from nemo_nvembed.training.host_memory import HostMemory
    from nemo_nvembed.training.nemo_model import NVEmbedModel, StageData
    from nemo_nvembed.training.preemption import PreemptionCheckpoint
    from nemo_nvembed.training.run_info import write_run_info
    from nemo_nvembed.training.strategy import MegatronDPStrategy
    from nemo_nvembed.training.watchdog import StepWatchdog

    tcfg, mcfg = cfg.train, cfg.model
    rank0, tp = env.rank == 0, cfg.parallel.tensor_model_parallel_size
    ckpt_dir = Path(OmegaConf.select(cfg, "exp_manager.checkpoint_callback_params.dirpath") or run_dir / "checkpoints")
    decision = distributed.decided_on_rank0(lambda: resume.choose(ckpt_dir, cfg.resume))
    if rank0:
        print(decision.format(), flush=True)
    # Runtime-only model settings (activation recompute) come from the stage config, the rest from
    # init_from, which the stage config must describe (check_architecture).
    with open_dict(saved):
        saved.recompute = mcfg.recompute
        saved.sequence_parallel = mcfg.sequence_parallel
    network = NVEmbedNetwork.load(cfg.init_from, tp=None, cfg=saved)
    if tcfg.frozen_weights_bf16 and str(cfg.trainer.precision).startswith("bf16"):  # no per-call casts of frozen weights
        import torch  # the command validates before anything heavy is imported

        network.cast_frozen_(torch.bfloat16)
    registry = sampling_registry(registry, loaded.summary.examples_per_task, tcfg.data)
    sampler = GlobalBatchSampler([e.task for e in loaded.examples], registry, tcfg.data.global_batch_size,
                                 distributed.dp_rank(), distributed.dp_size(), tcfg.data.seed, tcfg.data.sampling)

    preemption = PreemptionCheckpoint(run_dir)
    # First in the list: its on_train_batch_end feeds before the checkpoint and validation callbacks run.
    watchdog = StepWatchdog(run_dir, tcfg.watchdog_s, env.rank)
    callbacks = [watchdog, preemption, HostMemory(tcfg.host_memory_trim_every_n_steps, env.rank)]
    if tcfg.validation.beir:
        precision = "bf16" if "bf16" in str(cfg.trainer.precision) else "fp32"
        callbacks.append(RetrievalValidation(tcfg.validation.beir, registry[tcfg.validation.task].eval_instruction,
                                             tcfg.validation.every_n_steps, tcfg.validation.batch_size, precision))
    plugins = []
    if env.launcher == "slurm":  # our PreemptionCheckpoint handles Slurm's signals, not Lightning's auto-requeue
        from lightning.pytorch.plugins.environments import SLURMEnvironment

        plugins.append(SLURMEnvironment(auto_requeue=False))
    strategy = MegatronDPStrategy(tp, seed=mcfg.seed, checkpoint_io=ManifestCheckpointIO())
    trainer = pl.Trainer(strategy=strategy, callbacks=callbacks, plugins=plugins,
                         **OmegaConf.to_container(cfg.trainer, resolve=True))
    log_dir = exp_manager(trainer, OmegaConf.create(OmegaConf.to_container(cfg.exp_manager)))
    if rank0:
        write_run_info(log_dir, cfg)
    data = StageData(tcfg, registry, loaded.examples, sampler, cfg.trainer.max_steps, trace_dir=log_dir, teacher=teacher)
    model = NVEmbedModel(network.cfg, trainer=trainer, network=network, data=data)
    try:
        trainer.fit(model, ckpt_path=str(decision.checkpoint) if decision.checkpoint else None)
        if preemption.stopped:
            if rank0:
                print(f"stage {cfg.name} stopped by a signal at step {trainer.global_step}; relaunch to resume", flush=True)
            return None
        watchdog.feed(f"writing {out.name} after step {trainer.global_step}", trainer.global_step)
        try:
            model.save_to(str(out))
        except Exception as e:  # a full disk surfaces as OSError or as torch's RuntimeError around the write
            raise NemoWriteFailed(f"writing {out} after step {trainer.global_step} failed ({type(e).__name__}: {e}); "
                                  f"the checkpoints are kept: free space (or fix the folder) and relaunch to write it") from e
    finally:
        watchdog.stop()
        model.close()
    if rank0:
        print(f"stage {cfg.name} finished at step {trainer.global_step}: wrote {out}", flush=True)
    return out


def _stopped(e: BaseException, run_dir: Path, rank: int) -> StageStopped:
    """A runtime stop as one line; its traceback goes to ``<run_dir>/stop_rank<r>.log``."""
    import time
    import traceback

    log = run_dir / f"stop_rank{rank}.log"
    try:
        with open(log, "a") as f:
            f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} rank {rank}\n{''.join(traceback.format_exception(e))}\n")
        where = f"traceback in {log}"
    except OSError as why:
        where = f"traceback not written ({log}: {why.strerror})"
    message = str(e) if isinstance(e, (FloatingPointError, NemoWriteFailed)) else f"{type(e).__name__}: {e}"
    deterministic = isinstance(e, (FloatingPointError, NemoWriteFailed))
    return StageStopped(f"{message} [{where}]", STOP_EXIT if deterministic else 1)
