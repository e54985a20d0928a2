"""``NVEmbedNetwork``: the embedding network, a plain ``nn.Module`` that knows nothing of training.

backbone (megatron GPT, bidirectional, LoRA) -> token states [b, s, d] -> pooling head (``pooler``)
-> embedding [b, d]. It builds, embeds (``forward``, ``encode``), and saves/restores the
TP-independent ``.nemo`` (:mod:`nemo_nvembed.models.checkpoint`). Training composes it into the
one NeMo model class (:class:`nemo_nvembed.training.nemo_model.NVEmbedModel`) and calls down into it.

Parallel state (TP x DP) must exist before construction; :meth:`from_config` and :meth:`load` set
up a single-process one when there is none.
"""
from __future__ import annotations

import math
import tempfile
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm.auto import tqdm

from nemo_nvembed.models import checkpoint
from nemo_nvembed.models.backbone import attention_mask as build_attention_mask
from nemo_nvembed.models.backbone import build_backbone
from nemo_nvembed.models.config import check_parallel_layout, validate_model_config
from nemo_nvembed.models.lora import apply_lora
from nemo_nvembed.models.packing import Pack
from nemo_nvembed.models.pooling import Pooler
from nemo_nvembed.models.text import TextEncoder, load_tokenizer
from nemo_nvembed.parallel import cpu_compat, distributed, tp_layout

# Parameter prefixes of .nemo files and training checkpoints written before the pooler had one name.
LEGACY_PREFIXES = {"latent_attention_model.": "pooler."}


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


class NVEmbedNetwork(torch.nn.Module):
    """The network of one model config. ``tokenizer_file`` defaults to ``cfg.tokenizer.file``; its
    bytes are kept so that :meth:`save_to` can pack it whatever happens to the file afterwards."""

    def __init__(self, cfg, tokenizer_file: str | None = None):
        super().__init__()
        cfg = validate_model_config(cfg)
        if not distributed.is_initialized():
            raise RuntimeError(
                "NVEmbedNetwork needs torch.distributed and megatron parallel state; call "
                "nemo_nvembed.parallel.distributed.initialize(tp) first, or use NVEmbedNetwork.from_config / .load"
            )
        tp = distributed.tp_size()
        check_parallel_layout(cfg, tp)
        self.cfg = cfg
        tokenizer_file = str(tokenizer_file or cfg.tokenizer.file)
        self._tokenizer_name = Path(tokenizer_file).name
        self._tokenizer_bytes = Path(tokenizer_file).read_bytes()
        self.backbone = build_backbone(cfg.backbone, cfg.attention, tp, cfg.recompute, cfg.lora, cfg.sequence_parallel)
        self.lora_modules = apply_lora(self.backbone, cfg.lora)
        if cfg.recompute.granularity == "full":
            # megatron's recompute is a reentrant autograd function: it back-propagates only when
            # its input requires grad, which the frozen embedding's output does not.
            self.backbone.embedding.register_forward_hook(
                lambda module, args, out: out.requires_grad_(True) if torch.is_grad_enabled() else out)
        self.pooler = Pooler(cfg.pooling, cfg.backbone.hidden_size, self.backbone.config, tp)
        self.tokenizer = load_tokenizer(cfg.tokenizer, tokenizer_file)
        self.text = TextEncoder(self.tokenizer, cfg.query_template, cfg.tokenizer.add_bos, cfg.max_length, cfg.pool_span)
        if cpu_compat.cuda_available():
            # megatron puts its linear weights on the current GPU, but its torch RMSNorm, our LoRA and the
            # pooling head are built on the CPU: one device for the whole network (found by the GPU check).
            self.to(torch.device("cuda", torch.cuda.current_device()))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg, tp: int = 1) -> "NVEmbedNetwork":
        distributed.initialize(tp, seed=validate_model_config(cfg).seed)
        return cls(cfg)

    @classmethod
    def load(cls, path: str, tp: int | None = 1, cfg: DictConfig | None = None) -> "NVEmbedNetwork":
        """Restore a ``.nemo`` under any TP size (sets up parallel state if there is none; ``tp=None``:
        the current one, or 1). ``cfg`` replaces the saved config (the caller checked it describes
        the same architecture)."""
        if tp is not None or not distributed.is_initialized():
            distributed.initialize(tp or 1)
        saved = checkpoint.read_config(path)
        with tempfile.TemporaryDirectory() as tmp:
            network = cls(saved if cfg is None else cfg, tokenizer_file=checkpoint.tokenizer_file(path, saved, tmp))
        network.load_full_state_dict(checkpoint.load_weights(path, saved), source=f"{path} (its weights)")
        return network

    @staticmethod
    def read_config(path: str) -> DictConfig:
        """A ``.nemo``'s saved config, without building the network or reading its weights."""
        return checkpoint.read_config(path)

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
        """[b, s] ids and masks -> [b, d] embeddings (L2-normalised when pooling.normalize)."""
        cfg = self.backbone.config
        if cfg.sequence_parallel and input_ids.shape[1] % cfg.tensor_model_parallel_size:
            pad = cfg.tensor_model_parallel_size - input_ids.shape[1] % cfg.tensor_model_parallel_size
            input_ids, attention_mask, pool_mask = (F.pad(t, (0, pad)) for t in (input_ids, attention_mask, pool_mask))
        b, s = input_ids.shape
        position_ids = torch.arange(s, device=input_ids.device).unsqueeze(0).expand(b, s)  # right padding
        mask = build_attention_mask(attention_mask, self.cfg.attention, self.backbone.uses_te)
        hidden = self.backbone(input_ids, position_ids, mask)  # [s(/tp), b, d]
        if cfg.sequence_parallel:
            from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region

            hidden = gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=False)
        hidden = _ContiguousGrad.apply(hidden).transpose(0, 1)  # [b, s, d]: the one transpose
        return self.pooler(hidden, attention_mask, pool_mask)

    def forward_packed(self, pack: Pack) -> torch.Tensor:
        """A :class:`~nemo_nvembed.models.packing.Pack` (on this network's device) -> [n, d] embeddings,
        equal to :meth:`forward` on the same sequences padded (tests/test_packing.py)."""
        if self.backbone.config.sequence_parallel or self.backbone.uses_te:
            raise NotImplementedError("packed sequences run megatron's local spec without sequence parallelism")
        t = pack.input_ids.shape[0]
        if pack.positions_device is None:
            pack = pack.to(pack.input_ids.device)
        with pack.per_token_rope(self.backbone.rotary_pos_emb):  # RoPE positions restart at every sequence
            hidden = self.backbone(pack.input_ids.view(1, t), pack.positions_device.view(1, t), None,
                                   packed_seq_params=pack.thd_params())
        hidden = _ContiguousGrad.apply(hidden)[:, 0]  # [t, 1, d] -> [t, d]
        return self.pooler.forward_packed(hidden, pack)

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
        out = torch.empty(len(texts), self.cfg.backbone.hidden_size, dtype=torch.float32)
        dev = next(self.parameters()).device
        amp = torch.autocast(dev.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
        steps = range(0, len(texts), batch_size)
        if progress:
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

    def cast_frozen_(self, dtype: torch.dtype) -> "NVEmbedNetwork":
        """Hold the frozen weights (backbone, embedding, norms) in ``dtype``: under bf16 autocast the
        matmuls read them as they are instead of re-casting every frozen weight on every forward and
        input-gradient pass, and they take half the memory. Trainable weights (LoRA, the head) keep
        fp32 master weights (and so fp32 Adam state). ``.nemo`` files are written in fp32 either way."""
        for p in self.parameters():
            if not p.requires_grad and p.is_floating_point():
                p.data = p.data.to(dtype)
        return self

    # ------------------------------------------------------------------ full-layout weights, .nemo
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """All parameters in the TP=1 layout (collective over the TP group)."""
        return tp_layout.full_state_dict(self)

    def load_full_state_dict(self, full: dict[str, torch.Tensor], source: str = "state dict") -> None:
        tp_layout.load_full_state_dict(self, rename_legacy(full), source)

    def save_to(self, save_path: str) -> None:
        """Write a TP-independent ``.nemo``. Every rank must call it (the weights are gathered)."""
        full = {k: v.float() if v.dtype == torch.bfloat16 else v for k, v in self.full_state_dict().items()}
        if distributed.is_global_rank_zero():
            with tempfile.TemporaryDirectory() as tmp:
                tok = Path(tmp) / self._tokenizer_name
                tok.write_bytes(self._tokenizer_bytes)
                checkpoint.save_nemo(self.cfg, str(tok), full, str(save_path))
        distributed.barrier()


def rename_legacy(full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights saved under an older parameter prefix, renamed to today's."""
    out = {}
    for k, v in full.items():
        for old, new in LEGACY_PREFIXES.items():
            if k.startswith(old):
                k = new + k[len(old):]
        out[k] = v
    return out
