"""What a training stage hands the model: data stream, objective, optimizer and sample trace.

:class:`NVEmbedModel` is a model (construction, forward, encode, save/restore); its Lightning
training hooks delegate to the object given to :meth:`NVEmbedModel.attach_training`, this one.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist

from nemo_nvembed.data.jsonl import Example
from nemo_nvembed.data.sampler import GlobalBatchSampler
from nemo_nvembed.data.tasks import TaskRegistry
from nemo_nvembed.training.batches import BatchStream
from nemo_nvembed.training.objective import ContrastiveObjective
from nemo_nvembed.training.optim import build_optimizer, param_groups


class ContrastiveTraining:
    """The training data and objective of one stage (built by :mod:`nemo_nvembed.training.stage`).

    With ``trace_dir``, each rank appends the source lines of every batch it trains on to
    ``samples/rank<r>.jsonl`` there (a resumed run appends; the last entry of a step wins; a
    folder, because exp_manager moves a resumed run's top-level files into run_<n>/); :meth:`close`
    closes it.
    """

    def __init__(self, train_cfg, registry: TaskRegistry, examples: list[Example], sampler: GlobalBatchSampler,
                 seed: int, max_steps: int, trace_dir=None):
        self.train_cfg, self.registry, self.examples = train_cfg, registry, examples
        self._sampler, self._max_steps = sampler, max_steps
        self._skip_update = False  # the current step was skipped (non-finite loss): no optimizer update
        self._trace = None
        if trace_dir is not None:
            folder = Path(trace_dir) / "samples"
            folder.mkdir(parents=True, exist_ok=True)
            self._trace = open(folder / f"rank{dist.get_rank()}.jsonl", "a", buffering=1)
        self.objective = ContrastiveObjective(train_cfg, train_cfg.data.global_batch_size, seed, max_steps)

    def close(self) -> None:
        if self._trace is not None:
            self._trace.close()
            self._trace = None

    def train_dataloader(self, model) -> BatchStream:
        return BatchStream(self.examples, self._sampler, self.registry, model.text, self.train_cfg.data,
                           self.train_cfg.loss.in_batch_negatives, start=lambda: model.trainer.global_step)

    def training_step(self, model, batch):
        if batch.step != model.trainer.global_step:
            raise RuntimeError(f"data stream at step {batch.step} but trainer at step {model.trainer.global_step}")
        # Gradients are zeroed here, not by Lightning (which zeroes between training_step and
        # backward): GradCache back-propagates inside the step.
        for opt in model.trainer.optimizers:
            opt.zero_grad(set_to_none=True)
        loss, out = self.objective.step(model, batch)
        self._skip_update = loss is None
        if loss is None:  # skipped on every rank: Lightning (under DDP) needs a loss; this one has no gradient
            loss = torch.zeros((), device=out.global_loss.device, requires_grad=True)
        elif not loss.requires_grad:  # GradCache: gradients are already in place
            loss = loss.detach().requires_grad_()
        if self._trace is not None:
            self._trace.write(json.dumps({"step": batch.step, "lines": batch.lines}) + "\n")
        model.log_dict({"train_loss": out.global_loss, "train_acc": out.accuracy, "masked_duplicates": out.num_masked.float(),
                        "lr": model.trainer.optimizers[0].param_groups[0]["lr"]}, prog_bar=True, batch_size=len(batch.pos_keys))
        tok = self.objective.tokens
        model.log_dict({"skipped_nonfinite": float(self.objective.skipped_nonfinite),
                        "truncated_texts": float(self.objective.truncated_texts),
                        "tokens_real": float(tok["real"]), "tokens_padded": float(tok["padded"]),
                        "padding_waste": (tok["padded"] - tok["real"]) / max(1, tok["padded"])},
                       batch_size=len(batch.pos_keys))
        return loss

    def on_before_optimizer_step(self, model, optimizer) -> None:
        if self._skip_update:  # a skipped step: no gradient, so AdamW updates nothing (nor its moments)
            for p in model.parameters():
                p.grad = None

    def configure_optimizers(self, model):
        opt, sched = build_optimizer(param_groups(model, self.train_cfg.optim), self.train_cfg.optim, self._max_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, model, checkpoint):
        checkpoint["sampler"] = self._sampler.state_dict_at(model.trainer.global_step)
        checkpoint["skipped_nonfinite"] = self.objective.skipped_nonfinite

    def on_load_checkpoint(self, model, checkpoint):
        if "sampler" not in checkpoint:
            raise KeyError("training checkpoint has no sampler state: it was not written by nemo_nvembed.train")
        self._sampler.load_state_dict(checkpoint["sampler"])  # refuses a state from other data/seed
        self.objective.skipped_nonfinite = checkpoint.get("skipped_nonfinite", 0)  # absent: saved before it was counted
        if checkpoint["sampler"]["step"] != checkpoint["global_step"]:
            raise ValueError(f"checkpoint sampler step {checkpoint['sampler']['step']} != global step {checkpoint['global_step']}")
