"""``NVEmbedModel``: the one NeMo model class. It composes the network and owns training.

NeMo's recipe shape (``ModelPT`` + Lightning): the network
(:class:`~nemo_nvembed.models.network.NVEmbedNetwork`: backbone + pooling, forward, encode) is a
plain module; this class holds it as ``self.network`` and owns everything Lightning calls: the
stage's batches (:mod:`batches`), the contrastive objective (:mod:`objective`), the optimizer
(:mod:`optim`), logging, the sampler state in training checkpoints and ``.nemo`` save/restore
(through the network: inference restores the same file with the network alone). Calls go down
only: this module -> objective/batches -> network.

Built by :mod:`nemo_nvembed.training.stage` with the stage's inputs (:class:`StageData`); a model
restored without them (``restore_from``) can be saved and embedded with, not trained.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from nemo.core import ModelPT
from omegaconf import DictConfig

from nemo_nvembed.data.jsonl import Example
from nemo_nvembed.data.sampler import GlobalBatchSampler
from nemo_nvembed.data.tasks import TaskRegistry
from nemo_nvembed.data.teacher import TeacherTable
from nemo_nvembed.models.network import NVEmbedNetwork
from nemo_nvembed.training.batches import BatchStream, ContrastiveBatch
from nemo_nvembed.training.objective import ContrastiveObjective
from nemo_nvembed.training.optim import build_optimizer, param_groups


@dataclass
class StageData:
    """What one stage trains on (built by :mod:`nemo_nvembed.training.stage`)."""

    train_cfg: DictConfig  # the stage's ``train`` section
    registry: TaskRegistry
    examples: list[Example]
    sampler: GlobalBatchSampler
    max_steps: int
    trace_dir: Path | None = None  # each rank appends the source lines of its batches to samples/rank<r>.jsonl
    teacher: TeacherTable | None = None  # train.distill.embeddings, checked against the examples


class NVEmbedModel(ModelPT):
    def __init__(self, cfg: DictConfig, trainer=None, network: NVEmbedNetwork | None = None,
                 data: StageData | None = None):
        network = network if network is not None else NVEmbedNetwork(cfg)
        super().__init__(cfg=network.cfg, trainer=trainer)
        self.network = network
        self.data = data
        self.objective = None if data is None else ContrastiveObjective(
            data.train_cfg, data.train_cfg.data.global_batch_size, network.cfg.seed, data.max_steps)
        self._skip_update = False  # the current step was skipped (non-finite loss): no optimizer update
        self._trace = None
        if data is not None and data.trace_dir is not None:
            # A folder, because exp_manager moves a resumed run's top-level files into run_<n>/.
            folder = Path(data.trace_dir) / "samples"
            folder.mkdir(parents=True, exist_ok=True)
            self._trace = open(folder / f"rank{dist.get_rank()}.jsonl", "a", buffering=1)

    # ------------------------------------------------------------------ .nemo (through the network)
    @classmethod
    def restore_from(cls, restore_path, override_config_path=None, map_location=None, strict=True,
                     return_config=False, save_restore_connector=None, trainer=None, validate_access_integrity=True,
                     data: StageData | None = None):
        """NeMo's signature; the file is the network's TP-independent ``.nemo``. ``override_config_path``
        may be a config (the stage's: same architecture, its own runtime settings)."""
        if return_config:
            return NVEmbedNetwork.read_config(restore_path)
        network = NVEmbedNetwork.load(str(restore_path), tp=None, cfg=override_config_path)
        return cls(network.cfg, trainer=trainer, network=network, data=data)

    def save_to(self, save_path: str) -> None:
        """Write a TP-independent ``.nemo``. Every rank must call it (the weights are gathered)."""
        self.network.save_to(save_path)

    def close(self) -> None:
        if self._trace is not None:
            self._trace.close()
            self._trace = None

    # ------------------------------------------------------------------ Lightning: data and step
    def train_dataloader(self):
        d = self.data
        return BatchStream(d.examples, d.sampler, d.registry, self.network.text, d.train_cfg.data,
                           d.train_cfg.loss.in_batch_negatives, start=lambda: self.trainer.global_step, teacher=d.teacher)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        """Training batches stay on the host: the step plans chunks from host-side lengths and moves
        each chunk (or pack) to the device itself, so planning never waits for the device."""
        if isinstance(batch, ContrastiveBatch):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def training_step(self, batch, batch_idx):
        if batch.step != self.trainer.global_step:
            raise RuntimeError(f"data stream at step {batch.step} but trainer at step {self.trainer.global_step}")
        # Gradients are zeroed here, not by Lightning (which zeroes between training_step and
        # backward): GradCache back-propagates inside the step.
        for opt in self.trainer.optimizers:
            opt.zero_grad(set_to_none=True)
        loss, out = self.objective.step(self.network, batch)
        self._skip_update = loss is None
        if loss is None:  # skipped on every rank: Lightning (under DDP) needs a loss; this one has no gradient
            loss = torch.zeros((), device=out.global_loss.device, requires_grad=True)
        elif not loss.requires_grad:  # GradCache: gradients are already in place
            loss = loss.detach().requires_grad_()
        if self._trace is not None:
            self._trace.write(json.dumps({"step": batch.step, "lines": batch.lines}) + "\n")
        self._log_step(batch, out)
        return loss

    def _log_step(self, batch, out) -> None:
        n = len(batch.pos_keys)
        self.log_dict({"train_loss": out.global_loss, "train_acc": out.accuracy, "masked_duplicates": out.num_masked.float(),
                       "lr": self.trainer.optimizers[0].param_groups[0]["lr"]}, prog_bar=True, batch_size=n)
        if out.distill_loss is not None:  # included in train_loss (weighted)
            self.log("distill_loss", out.distill_loss, batch_size=n)
        obj, tok = self.objective, self.objective.tokens
        self.log_dict({"skipped_nonfinite": float(obj.skipped_nonfinite), "truncated_texts": float(obj.truncated_texts),
                       "tokens_real": float(tok["real"]), "tokens_padded": float(tok["padded"]),
                       "padding_waste": (tok["padded"] - tok["real"]) / max(1, tok["padded"])}, batch_size=n)

    def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
        pass  # the training step zeroes them: GradCache back-propagates inside the step

    def on_before_optimizer_step(self, optimizer):
        if self._skip_update:  # a skipped step: no gradient, so AdamW updates nothing (nor its moments)
            for p in self.parameters():
                p.grad = None

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        # trainer.gradient_clip_val, by the global norm over TP x DP (Lightning's would clip per rank).
        norm = self.trainer.strategy.clip_gradients(gradient_clip_val, gradient_clip_algorithm)
        if norm is not None:
            self.log("grad_norm", norm, batch_size=1)

    def configure_optimizers(self):
        optim = self.data.train_cfg.optim
        opt, sched = build_optimizer(param_groups(self.network, optim), optim, self.data.max_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ Lightning: checkpoints
    def on_save_checkpoint(self, checkpoint):
        checkpoint["sampler"] = self.data.sampler.state_dict_at(self.trainer.global_step)
        checkpoint["skipped_nonfinite"] = self.objective.skipped_nonfinite

    def on_load_checkpoint(self, checkpoint):
        if "sampler" not in checkpoint:
            raise KeyError("training checkpoint has no sampler state: it was not written by nemo_nvembed.train")
        self.data.sampler.load_state_dict(checkpoint["sampler"])  # refuses a state from other data/seed
        self.objective.skipped_nonfinite = checkpoint.get("skipped_nonfinite", 0)  # absent: saved before it was counted
        if checkpoint["sampler"]["step"] != checkpoint["global_step"]:
            raise ValueError(f"checkpoint sampler step {checkpoint['sampler']['step']} != global step {checkpoint['global_step']}")

    # ------------------------------------------------------------------ NeMo hooks
    def setup_training_data(self, train_data_config):
        pass  # data comes with the constructor (StageData)

    def setup_validation_data(self, val_data_config):
        pass

    @classmethod
    def list_available_models(cls):
        return None
