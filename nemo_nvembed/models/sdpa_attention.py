"""Core attention for megatron's local (non-Transformer-Engine) layer spec via PyTorch's fused
``scaled_dot_product_attention``.

megatron-core's local ``DotProductAttention`` materialises the [b, heads, s, s] score matrix with
``baddbmm`` and an unfused softmax; on CPU (and on GPUs without Transformer Engine) SDPA's fused
kernels are faster and lighter. Same inputs and output layout, so it is a spec change.
"""
from __future__ import annotations

import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule


class SDPACoreAttention(MegatronModule):
    def __init__(self, config, layer_number, attn_mask_type, attention_type="self", attention_dropout=None,
                 softmax_scale=None, cp_comm_type=None, model_comm_pgs=None, pg_collection=None, **kwargs):
        super().__init__(config=config)
        self.attn_mask_type = attn_mask_type
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        self.softmax_scale = softmax_scale

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        """query [sq, b, np, hn], key/value [sk, b, ng, hn], mask True = blocked -> [sq, b, np*hn]."""
        assert packed_seq_params is None and attention_bias is None
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, hn]
        if k.shape[1] != q.shape[1]:  # grouped-query attention
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        mask = None if attention_mask is None else ~attention_mask  # SDPA: True = attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.softmax_scale,
                                             dropout_p=self.dropout if self.training else 0.0)  # [b, np, sq, hn]
        return out.permute(2, 0, 1, 3).flatten(2)  # [sq, b, np*hn]
