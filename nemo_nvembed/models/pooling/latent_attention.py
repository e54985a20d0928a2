"""NV-Embed's latent-attention pooling head (paper section 3.2), tensor-parallel and fused.

Parameter names and shapes follow the released NV-Embed-v2 head (``nvidia/NV-Embed-v2`` on the Hugging Face Hub):
``latents``, ``cross_attend_blocks.0.{norm,norm_context,fn.to_q,fn.to_kv,fn.to_out}`` and
``cross_attend_blocks.1.{norm,fn.net.0,fn.net.2}``. Token states are the queries; the trainable
latents give keys and values. Heads (``to_q``, ``to_kv``, ``to_out``) and the GEGLU MLP are split
over TP ranks with megatron's column/row-parallel linears; norms and latents are replicated.

Fused: the released code repeats the latents over the batch and projects them per sequence; the
latents do not depend on the input, so keys and values are computed once per forward ([r, 2*inner])
and broadcast, and attention runs in ``scaled_dot_product_attention``.

The same blocks with ``context = the token states`` give the paper's "self-attention + MLP"
pooling ablation (Table 2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.utils import init_method_normal

from nemo_nvembed.models.pooling.base import masked_mean
from nemo_nvembed.parallel import tp_layout


class CrossAttention(torch.nn.Module):
    def __init__(self, query_dim: int, context_dim: int, heads: int, dim_head: int, config, tp: int):
        super().__init__()
        inner = heads * dim_head
        self.heads_local, self.dim_head = heads // tp, dim_head
        init = init_method_normal(config.init_method_std)
        self.to_q = ColumnParallelLinear(query_dim, inner, config=config, init_method=init, bias=False)
        self.to_kv = ColumnParallelLinear(context_dim, 2 * inner, config=config, init_method=init, bias=False)
        tp_layout.mark(self.to_kv.weight, 0, chunks=2)  # [K; V] halves split separately
        self.to_out = RowParallelLinear(
            inner, query_dim, config=config, init_method=init, bias=False, input_is_parallel=True, skip_bias_add=False
        )

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        # [..., n, heads_local * dh] -> [..., heads_local, n, dh]
        return t.unflatten(-1, (self.heads_local, self.dim_head)).transpose(-3, -2)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None):
        """x: [b, s, d] normed queries; context: [r, d] (shared latents) or [b, s, d]; mask: [b, s] keys."""
        q = self.to_q(x)[0]  # [b, s, inner]
        k, v = self.to_kv(context)[0].chunk(2, dim=-1)  # [r, inner] each (or [b, s, inner])
        if k.dim() == 2:
            # Shared latents, no key mask: every token attends to the same r keys, so the batch folds
            # into one query sequence of b*s rows against a single K/V. Nothing is broadcast per
            # sequence, so the backward accumulates one [H, r, dh] K/V gradient instead of b of them
            # (16 sequences x 512 latents x 9 x 576 x fp32 each: ~0.7 GB at SmolLM2 width, measured).
            b, s = q.shape[:2]
            out = F.scaled_dot_product_attention(self._heads(q.flatten(0, 1))[None], self._heads(k)[None],
                                                 self._heads(v)[None])  # [1, H, b*s, dh]
            return self.to_out(out[0].transpose(0, 1).reshape(b, s, -1))[0]  # [b, s, d], summed over TP ranks
        q, k, v = self._heads(q), self._heads(k), self._heads(v)  # [b, H, s, dh]
        attn_mask = None if context_mask is None else context_mask.bool()[:, None, None, :]  # [b, 1, 1, s]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [b, H, s, dh]
        out = out.transpose(1, 2).flatten(2)  # [b, s, H*dh]
        return self.to_out(out)[0]  # [b, s, d], summed over TP ranks


class FeedForward(torch.nn.Module):
    """Linear(d -> 2*mult*d) -> GEGLU (a * gelu(g)) -> Linear(mult*d -> d), the released layout."""

    def __init__(self, dim: int, mult: int, config, tp: int):
        super().__init__()
        init = init_method_normal(config.init_method_std)
        fc1 = ColumnParallelLinear(dim, 2 * mult * dim, config=config, init_method=init, bias=True)
        tp_layout.mark(fc1.weight, 0, chunks=2)
        tp_layout.mark(fc1.bias, 0, chunks=2)
        fc2 = RowParallelLinear(mult * dim, dim, config=config, init_method=init, bias=True,
                                input_is_parallel=True, skip_bias_add=False)
        self.net = torch.nn.ModuleList([fc1, torch.nn.Identity(), fc2])  # indices match net.0 / net.2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, g = self.net[0](x)[0].chunk(2, dim=-1)  # [b, s, mult*d/tp] each
        return self.net[2](a * F.gelu(g))[0]  # [b, s, d]


class PreNorm(torch.nn.Module):
    def __init__(self, dim: int, fn: torch.nn.Module, context_dim: int | None = None):
        super().__init__()
        self.norm = torch.nn.LayerNorm(dim)
        self.fn = fn
        self.norm_context = torch.nn.LayerNorm(context_dim) if context_dim is not None else None


class AttentionPooler(torch.nn.Module):
    """Latent attention (``latent=True``) or self-attention + MLP pooling, then masked mean."""

    def __init__(self, dim: int, pooling_cfg, config, tp: int, latent: bool = True):
        super().__init__()
        p = pooling_cfg
        self.latent = latent
        if latent:
            self.latents = torch.nn.Parameter(torch.randn(p.num_latents, dim))  # as released: N(0, 1)
        attn = CrossAttention(dim, dim, p.num_heads, p.dim_head, config, tp)
        self.cross_attend_blocks = torch.nn.ModuleList([
            PreNorm(dim, attn, context_dim=dim if latent else None),
            PreNorm(dim, FeedForward(dim, p.ff_mult, config, tp)),
        ])

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
        """hidden: [b, s, d]; attention_mask, pool_mask: [b, s] -> pooled [b, d]."""
        return masked_mean(self._token_outputs(hidden, attention_mask), pool_mask)

    def forward_packed(self, hidden: torch.Tensor, pack) -> torch.Tensor:
        """hidden: [t, d] packed (:class:`~nemo_nvembed.models.packing.Pack`) -> pooled [n, d]. Latent
        attention treats every token alone (its keys are the latents), so the head runs on the pooled
        tokens only; self-attention needs each sequence's tokens, so it runs padded."""
        if not self.latent:
            return self(*pack.unpack(hidden))
        h = self._token_outputs(hidden[pack.pool_index][None], None)[0]  # [p, d]
        return pack.segment_mean(h)

    def _token_outputs(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """[b, s, d] -> the head's output per token, [b, s, d] (before pooling)."""
        attn_block, ff_block = self.cross_attend_blocks
        x = attn_block.norm(hidden)
        if self.latent:
            context, context_mask = attn_block.norm_context(self.latents), None  # [r, d]; no mask (released)
        else:
            context, context_mask = x, attention_mask
        h = hidden + attn_block.fn(x, context, context_mask)  # [b, s, d]
        return h + ff_block.fn(ff_block.norm(h))  # [b, s, d]
