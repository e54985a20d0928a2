"""``NVEmbedModel``: the one NeMo model class. Everything else is composed into it.

backbone (megatron GPT, bidirectional, LoRA) -> token states [b, s, d] -> pooling head ->
embedding [b, d]. Parallel state (TP x DP) must exist before construction; :meth:`from_config`
and :meth:`load` set up a single-process one when there is none.
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from nemo.core import ModelPT
from omegaconf import DictConfig

from nemo_nvembed.parallel import cpu_compat, distributed, tp_layout
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
        self.text = TextEncoder(self.tokenizer, c.query_template, c.tokenizer.add_bos, c.max_length, c.pool_span)
        if cpu_compat.cuda_available():
            # megatron puts its linear weights on the current GPU, but its torch RMSNorm, our LoRA and the
            # pooling head are built on the CPU: one device for the whole model (found by the GPU check).
            self.to(torch.device("cuda", torch.cuda.current_device()))

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_config(cls, cfg, tp: int = 1, trainer=None) -> "NVEmbedModel":
        distributed.initialize(tp, seed=validate_model_config(cfg).seed)
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

    # ------------------------------------------------------------------ training (delegated)
    def attach_training(self, training) -> None:
        """Hand in a training stage's data, objective and optimizer factory (built by
        :mod:`nemo_nvembed.training.stage`); Lightning's training hooks below delegate to it."""
        self._training = training

    def train_dataloader(self):
        return self._training.train_dataloader(self)

    def training_step(self, batch, batch_idx):
        return self._training.training_step(self, batch)

    def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
        pass  # the training step zeroes them: GradCache back-propagates inside the step

    def on_before_optimizer_step(self, optimizer):
        self._training.on_before_optimizer_step(self, optimizer)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        # trainer.gradient_clip_val, by the global norm over TP x DP (Lightning's would clip per rank).
        norm = self.trainer.strategy.clip_gradients(gradient_clip_val, gradient_clip_algorithm)
        if norm is not None:
            self.log("grad_norm", norm, batch_size=1)

    def configure_optimizers(self):
        return self._training.configure_optimizers(self)

    def on_save_checkpoint(self, checkpoint):
        self._training.on_save_checkpoint(self, checkpoint)

    def on_load_checkpoint(self, checkpoint):
        self._training.on_load_checkpoint(self, checkpoint)

    # ------------------------------------------------------------------ NeMo hooks
    def setup_training_data(self, train_data_config):
        pass  # data comes with attach_training

    def setup_validation_data(self, val_data_config):
        pass

    @classmethod
    def list_available_models(cls):
        return None
