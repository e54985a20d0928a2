"""Core attention for megatron's local (non-Transformer-Engine) layer spec via PyTorch's fused
kernels, padded or packed.

megatron-core's local ``DotProductAttention`` materialises the [b, heads, s, s] score matrix with
``baddbmm`` and an unfused softmax; on CPU (and on GPUs without Transformer Engine) SDPA's fused
kernels are faster and lighter. Same inputs and output layout, so it is a spec change.

Padded (``[s, b, heads, hn]``, a padding mask): one ``scaled_dot_product_attention`` call.

Packed (megatron's THD format, ``packed_seq_params.qkv_format == "thd"``: ``[t, heads, hn]``, the
sequences end to end, ``cu_seqlens`` their boundaries): every sequence attends within itself only,
never across. On CUDA one variable-length flash-attention call (``torch.nn.attention.varlen``); on
CPU a few padded SDPA calls over length groups of the pack's sequences (models/packing.AttentionGroups:
padding only inside the attention, keys masked) or, causal, one call per sequence. The same maths;
tests compare packed with padded on CPU.

CPU training over short sequences (:func:`attend`): PyTorch's CPU flash-attention kernel is fast
forward but its backward is not (bf16, 9 heads of 64, one thread: 45 ms backward against 4 ms
forward for 24 sequences of 64 tokens). Where gradients flow on the CPU in bf16 or fp16 and at most
``MATH_MAX_KEYS`` keys are attended, the attention is written out instead, in fp32 (the flash kernel's accumulation
precision), the output cast back; 19 ms forward + backward there,
and the demo's whole step 6.9 s -> 4.6 s. Longer sequences, inference, fp32 (the parity tests'
precision) and CUDA keep SDPA's kernels.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule

MATH_MAX_KEYS = 128  # CPU training: up to this many keys, explicit attention beats the flash kernel's backward
_varlen_failed = False  # set once varlen attention raised (warned once; the grouped path from then on)
META_RUNS_CUDA_PATH = False  # bench --dry (benchmark/dry.py): meta tensors take CUDA's path, to count the GPU step

try:  # torch >= 2.9 on CUDA: variable-length flash attention
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # pragma: no cover - older torch
    varlen_attn = None


class SDPACoreAttention(MegatronModule):
    def __init__(self, config, layer_number, attn_mask_type, attention_type="self", attention_dropout=None,
                 softmax_scale=None, cp_comm_type=None, model_comm_pgs=None, pg_collection=None, **kwargs):
        super().__init__(config=config)
        self.attn_mask_type = attn_mask_type
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        self.softmax_scale = softmax_scale
        self.causal = False  # packed sequences: set by models/backbone.build_backbone for causal attention

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        """query [sq, b, np, hn], key/value [sk, b, ng, hn], mask True = blocked -> [sq, b, np*hn];
        packed: query [t, np, hn], key/value [t, ng, hn] -> [t, np, hn]."""
        assert attention_bias is None
        p = self.dropout if self.training else 0.0
        if packed_seq_params is not None:
            assert packed_seq_params.qkv_format == "thd" and p == 0.0, "packed attention: thd format, no dropout"
            return self._packed(query, key, value, packed_seq_params)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, hn]
        k, v = _expand_groups(q, k, v)
        mask = None if attention_mask is None else ~attention_mask  # SDPA: True = attend
        out = (attend(q, k, v, mask, self.softmax_scale) if p == 0.0
               else F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.softmax_scale, dropout_p=p))  # [b, np, sq, hn]
        return out.permute(2, 0, 1, 3).flatten(2)  # [sq, b, np*hn]

    def _packed(self, query, key, value, params):
        """Each sequence of the pack attends within itself (causal when ``self.causal``)."""
        global _varlen_failed
        causal = self.causal
        if _cuda_path(query) and varlen_attn is not None and not _varlen_failed:
            cu = params.cu_seqlens_device  # models/packing.Pack.thd_params
            try:
                return varlen_attn(query, key, value, cu, cu, params.max_seqlen_q,
                                   params.max_seqlen_kv, scale=self.softmax_scale,
                                   window_size=(-1, 0) if causal else (-1, -1),
                                   enable_gqa=key.shape[1] != query.shape[1])  # [t, np, hn]
            except Exception as e:  # noqa: BLE001 - an unsupported GPU/dtype must not stop training: the grouped path is exact
                _varlen_failed = True
                warnings.warn(f"packed attention: varlen flash attention failed ({type(e).__name__}: {e}); "
                              f"using padded SDPA calls over length groups")
        groups = getattr(params, "cpu_groups", None)
        if groups is None and _cuda_path(query) and hasattr(params, "pack"):  # CUDA without varlen: the grouped path
            groups = params.pack.attention_groups
        if groups is not None and not causal:  # a few padded calls (models/packing.AttentionGroups)
            outs = []
            for rows, mask, (n, s) in zip(groups.gather, groups.key_mask, groups.shapes):
                rows, mask = rows.to(query.device), mask.to(query.device)  # CPU: no-ops; meta (bench --dry)
                q, k, v = (t.index_select(0, rows).view(n, s, *t.shape[1:]).transpose(1, 2)
                           for t in (query, key, value))  # [n_g, heads, s_g, hn]
                k, v = _expand_groups(q, k, v)
                o = attend(q, k, v, mask, self.softmax_scale)  # [n_g, np, s_g, hn]
                outs.append(o.transpose(1, 2).reshape(n * s, *o.shape[1:2], o.shape[3]))  # [n_g * s_g, np, hn]
            return torch.cat(outs).index_select(0, groups.scatter.to(query.device))  # [t, np, hn]
        outs = []
        bounds = params.bounds  # host copy of cu_seqlens (models/network.py): no device sync per layer
        for a, b in zip(bounds[:-1], bounds[1:]):
            q, k, v = (t[a:b].transpose(0, 1).unsqueeze(0) for t in (query, key, value))  # [1, heads, s_i, hn]
            k, v = _expand_groups(q, k, v)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=self.softmax_scale)  # [1, np, s_i, hn]
            outs.append(o[0].transpose(0, 1))  # [s_i, np, hn]
        return torch.cat(outs)  # [t, np, hn]


def attend(q, k, v, mask=None, scale=None):
    """Non-causal attention, [b, heads, s, hn] each, ``mask`` True = attend (broadcast to the scores).
    SDPA, except CPU training in bf16/fp16 over at most ``MATH_MAX_KEYS`` keys (module docstring):
    explicit attention in fp32, whose backward is ~3-5x faster than the flash
    kernel's there."""
    grads = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if _cuda_path(q) or not grads or q.dtype not in (torch.bfloat16, torch.float16) or k.shape[-2] > MATH_MAX_KEYS:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * (scale or q.shape[-1] ** -0.5)  # [b, heads, s, s]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, -1), v.float()).to(v.dtype)  # [b, heads, s, hn]


def _cuda_path(query) -> bool:
    return query.is_cuda or (META_RUNS_CUDA_PATH and query.is_meta)


def _expand_groups(q, k, v):
    """Grouped-query K/V repeated to the query heads, as before packing came. With SDPA's ``enable_gqa``
    instead, the demo's stage 1 took 369 s instead of 280 s and ended at another nDCG@10 (0.523, not
    0.544); whether that kernel is the cause is not yet isolated, so the proven path stays."""
    if k.shape[1] == q.shape[1]:
        return k, v
    rep = q.shape[1] // k.shape[1]
    return k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
