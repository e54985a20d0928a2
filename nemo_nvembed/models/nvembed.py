"""``NVEmbedModel``: the one NeMo model class. Everything else is composed into it.

backbone (megatron GPT, bidirectional, LoRA) -> token states [b, s, d] -> pooling head ->
embedding [b, d]. Parallel state (TP x DP) must exist before construction; :meth:`from_config`
and :meth:`load` set up a single-process one when there is none.
"""
from __future__ import annotations

import json
import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from nemo.core import ModelPT
from omegaconf import DictConfig, OmegaConf

from nemo_nvembed.parallel import distributed, tp_layout
from nemo_nvembed.models.backbone import attention_mask as build_attention_mask
from nemo_nvembed.models.backbone import build_backbone
from nemo_nvembed.models.checkpoint import TPAgnosticConnector
from nemo_nvembed.models.config import check_parallel_layout, validate_model_config
from nemo_nvembed.models.lora import apply_lora
from nemo_nvembed.models.pooling import Pooler
from nemo_nvembed.models.text import TextEncoder, load_tokenizer


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the gradient contiguous. The head's gradient arrives [b, s, d];
    transposed back to megatron's [s, b, d] it is strided, and a strided gradient makes every frozen
    linear's backward (``grad.matmul(weight)``) fall back to a batched matmul over a copied weight:
    33x slower per layer on CPU (measured). One copy here keeps every layer's backward a plain GEMM."""

    @staticmethod
    def forward(ctx, x):
        return x

    @staticmethod
    def backward(ctx, grad):
        # Not .contiguous(): with b = 1 a transposed [s, 1, d] gradient counts as contiguous but keeps
        # odd strides, and matmul then expands the weight over s (1.7 GB at s = 1024, measured).
        return grad.clone(memory_format=torch.contiguous_format)


class NVEmbedModel(ModelPT):
    def __init__(self, cfg: DictConfig, trainer=None):
        cfg = validate_model_config(cfg)
        if not distributed.is_initialized():
            raise RuntimeError(
                "NVEmbedModel needs torch.distributed and megatron parallel state; call "
                "nemo_nvembed.parallel.distributed.initialize(tp) first, or use NVEmbedModel.from_config / .load"
            )
        tp = distributed.tp_size()
        check_parallel_layout(cfg, tp)
        super().__init__(cfg=cfg, trainer=trainer)
        self._save_restore_connector = TPAgnosticConnector()
        c = self._cfg
        self.backbone = build_backbone(c.backbone, c.attention, tp, c.recompute, c.lora)
        self.lora_modules = apply_lora(self.backbone, c.lora)
        if c.recompute.granularity == "full":
            # megatron's recompute is a reentrant autograd function: it back-propagates only when
            # its input requires grad, which the frozen embedding's output does not.
            self.backbone.embedding.register_forward_hook(
                lambda module, args, out: out.requires_grad_(True) if torch.is_grad_enabled() else out)
        self.latent_attention_model = Pooler(c.pooling, c.backbone.hidden_size, self.backbone.config, tp)
        tok_file = self.register_artifact("tokenizer.file", c.tokenizer.file)
        self.tokenizer = load_tokenizer(c.tokenizer, tok_file)
        self.text = TextEncoder(self.tokenizer, c.query_template, c.tokenizer.add_bos, c.max_length)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_config(cls, cfg, tp: int = 1, trainer=None) -> "NVEmbedModel":
        seed = OmegaConf.select(OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg, "seed", default=1234)
        distributed.initialize(tp, seed=seed)
        return cls(cfg, trainer=trainer)

    @classmethod
    def load(cls, path: str, tp: int = 1, trainer=None) -> "NVEmbedModel":
        """Restore a ``.nemo`` under any TP size (sets up parallel state if there is none)."""
        distributed.initialize(tp)
        return cls.restore_from(path, trainer=trainer, map_location=torch.device("cpu"))

    @classmethod
    def restore_from(cls, restore_path, override_config_path=None, map_location=None, strict=True,
                     return_config=False, save_restore_connector=None, trainer=None, validate_access_integrity=True):
        return super().restore_from(
            restore_path, override_config_path, map_location, strict, return_config,
            save_restore_connector or TPAgnosticConnector(), trainer, validate_access_integrity,
        )

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
        """[b, s] ids and masks -> [b, d] embeddings (L2-normalised when pooling.normalize)."""
        cfg = self.backbone.config
        if cfg.sequence_parallel and input_ids.shape[1] % cfg.tensor_model_parallel_size:
            pad = cfg.tensor_model_parallel_size - input_ids.shape[1] % cfg.tensor_model_parallel_size
            input_ids, attention_mask, pool_mask = (F.pad(t, (0, pad)) for t in (input_ids, attention_mask, pool_mask))
        b, s = input_ids.shape
        position_ids = torch.arange(s, device=input_ids.device).unsqueeze(0).expand(b, s)  # right padding
        mask = build_attention_mask(attention_mask, self._cfg.attention, self.backbone.uses_te)
        hidden = self.backbone(input_ids, position_ids, mask)  # [s(/tp), b, d]
        if cfg.sequence_parallel:
            from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region

            hidden = gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=False)
        hidden = _ContiguousGrad.apply(hidden).transpose(0, 1)  # [b, s, d]: the one transpose
        return self.latent_attention_model(hidden, attention_mask, pool_mask)

    def embed_batch(self, batch) -> torch.Tensor:
        dev = next(self.parameters()).device
        return self(batch.input_ids.to(dev), batch.attention_mask.to(dev), batch.pool_mask.to(dev))

    @torch.no_grad()
    def encode(self, texts: list[str], instruction: str | None = None, batch_size: int = 32,
               max_length: int | None = None, precision: str = "fp32", progress: bool = False) -> torch.Tensor:
        """Embed texts -> float32 [n, d] on CPU, in input order.

        ``instruction`` (a query's task definition) is prefixed as ``Instruct: ...\\nQuery: ``;
        documents take none. Texts are length-sorted into batches to limit padding.
        """
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', not {precision!r}")
        was_training = self.training
        self.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self._cfg.backbone.hidden_size, dtype=torch.float32)
        dev = next(self.parameters()).device
        amp = torch.autocast(dev.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
        steps = range(0, len(texts), batch_size)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, total=math.ceil(len(texts) / batch_size), desc="encode", unit="batch")
        try:
            for start in steps:
                idx = order[start : start + batch_size]
                with amp:
                    emb = self.embed_batch(self.text([texts[i] for i in idx], instruction, max_length))
                out[idx] = emb.float().cpu()
        finally:
            self.train(was_training)
        return out

    # ------------------------------------------------------------------ full-layout weights
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """All parameters in the TP=1 layout (collective over the TP group)."""
        return tp_layout.full_state_dict(self)

    def load_full_state_dict(self, full: dict[str, torch.Tensor], source: str = "state dict") -> None:
        tp_layout.load_full_state_dict(self, full, source)

    def save_to(self, save_path: str) -> None:
        """Write a TP-independent ``.nemo``. Every rank must call it (the weights are gathered)."""
        full = self.full_state_dict()
        if distributed.is_global_rank_zero():
            self._save_restore_connector.save_full(self, full, str(save_path))
        distributed.barrier()

    # ------------------------------------------------------------------ contrastive training
    def setup_contrastive(self, train_cfg, registry, examples, sampler, max_steps: int, trace_dir=None) -> None:
        """Attach the training data and objective (called by nemo_nvembed.train before fit).

        With ``trace_dir``, each rank appends the source lines of every batch it trains on to
        ``samples/rank<r>.jsonl`` there (a resumed run appends; the last entry of a step wins; a
        folder, because exp_manager moves a resumed run's top-level files into run_<n>/).
        """
        from nemo_nvembed.training.objective import BatchStream, ContrastiveObjective

        self.train_cfg, self._sampler, self._max_steps = train_cfg, sampler, max_steps
        self._skip_update = False
        self._trace = None
        if trace_dir is not None:
            import torch.distributed as dist

            from pathlib import Path

            folder = Path(trace_dir) / "samples"
            folder.mkdir(parents=True, exist_ok=True)
            self._trace = open(folder / f"rank{dist.get_rank()}.jsonl", "a", buffering=1)
        self.objective = ContrastiveObjective(train_cfg, train_cfg.data.global_batch_size, self._cfg.seed, max_steps)
        self._train_dl = BatchStream(examples, sampler, registry, self.text, train_cfg.data,
                                     train_cfg.loss.in_batch_negatives, start=lambda: self.trainer.global_step)

    def train_dataloader(self):
        return self._train_dl

    def training_step(self, batch, batch_idx):
        if batch.step != self.trainer.global_step:
            raise RuntimeError(f"data stream at step {batch.step} but trainer at step {self.trainer.global_step}")
        # Gradients are zeroed here, not by Lightning (which zeroes between training_step and
        # backward): GradCache back-propagates inside the step.
        for opt in self.trainer.optimizers:
            opt.zero_grad(set_to_none=True)
        loss, out = self.objective.step(self, batch)
        self._skip_update = loss is None
        if loss is None:  # skipped on every rank: Lightning (under DDP) needs a loss; this one has no gradient
            loss = torch.zeros((), device=out.global_loss.device, requires_grad=True)
        elif not loss.requires_grad:  # GradCache: gradients are already in place
            loss = loss.detach().requires_grad_()
        if self._trace is not None:
            self._trace.write(json.dumps({"step": batch.step, "lines": batch.lines}) + "\n")
        self.log_dict({"train_loss": out.global_loss, "train_acc": out.accuracy, "masked_duplicates": out.num_masked.float(),
                       "lr": self.trainer.optimizers[0].param_groups[0]["lr"]}, prog_bar=True, batch_size=len(batch.pos_keys))
        tok = self.objective.tokens
        self.log_dict({"skipped_nonfinite": float(self.objective.skipped_nonfinite),
                       "truncated_texts": float(self.objective.truncated_texts),
                       "tokens_real": float(tok["real"]), "tokens_padded": float(tok["padded"]),
                       "padding_waste": (tok["padded"] - tok["real"]) / max(1, tok["padded"])},
                      batch_size=len(batch.pos_keys))
        return loss

    def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
        pass  # see training_step

    def on_before_optimizer_step(self, optimizer):
        if self._skip_update:  # a skipped step: no gradient, so AdamW updates nothing (nor its moments)
            for p in self.parameters():
                p.grad = None

    def configure_optimizers(self):
        from nemo_nvembed.training.objective import build_optimizer

        params = [p for p in self.parameters() if p.requires_grad]
        opt, sched = build_optimizer(params, self.train_cfg.optim, self._max_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        checkpoint["sampler"] = self._sampler.state_dict_at(self.trainer.global_step)
        checkpoint["skipped_nonfinite"] = self.objective.skipped_nonfinite

    def on_load_checkpoint(self, checkpoint):
        if "sampler" not in checkpoint:
            raise KeyError("training checkpoint has no sampler state: it was not written by nemo_nvembed.train")
        self._sampler.load_state_dict(checkpoint["sampler"])  # refuses a state from other data/seed
        self.objective.skipped_nonfinite = checkpoint.get("skipped_nonfinite", 0)  # absent: saved before it was counted
        if checkpoint["sampler"]["step"] != checkpoint["global_step"]:
            raise ValueError(f"checkpoint sampler step {checkpoint['sampler']['step']} != global step {checkpoint['global_step']}")

    # ------------------------------------------------------------------ NeMo hooks
    def setup_training_data(self, train_data_config):
        pass  # data is wired by setup_contrastive (nemo_nvembed.train)

    def setup_validation_data(self, val_data_config):
        pass

    @classmethod
    def list_available_models(cls):
        return None
