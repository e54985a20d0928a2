"""The plain reference step the benchmark compares against: what one would write with
transformers + PEFT: a Hugging Face Llama/Mistral with a non-causal padding mask, PEFT LoRA on the
attention and MLP projections, NV-Embed's latent-attention head and InfoNCE loss in plain PyTorch,
every text padded to the longest in its group (queries, passages), one forward and backward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class PlainLatentAttention(torch.nn.Module):
    """NV-Embed-v2's head written directly from the facts file.

    The released code repeats the latents per sequence before projecting them; at the benchmark's
    batch (144 sequences x 512 latents x 2*9*576 K/V width, fp32: ~3 GB, plus its autograd copies)
    that ran out of memory on our 24 GB CPU machines, so the reference projects them once and
    broadcasts them over the batch (ours goes further and folds the batch into one query sequence)."""

    def __init__(self, d: int, num_latents: int, heads: int, dim_head: int, mult: int):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.latents = torch.nn.Parameter(torch.randn(num_latents, d))
        self.norm, self.norm_context = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.to_q = torch.nn.Linear(d, inner, bias=False)
        self.to_kv = torch.nn.Linear(d, 2 * inner, bias=False)
        self.to_out = torch.nn.Linear(inner, d, bias=False)
        self.ff_norm = torch.nn.LayerNorm(d)
        self.fc1, self.fc2 = torch.nn.Linear(d, 2 * mult * d), torch.nn.Linear(mult * d, d)

    def forward(self, h: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
        b = h.shape[0]
        q = self.to_q(self.norm(h))
        k, v = self.to_kv(self.norm_context(self.latents)).chunk(2, dim=-1)  # [r, inner] each
        split = lambda t: t.unflatten(-1, (self.heads, self.dim_head)).transpose(-3, -2)  # noqa: E731
        k, v = split(k).unsqueeze(0).expand(b, -1, -1, -1), split(v).unsqueeze(0).expand(b, -1, -1, -1)
        a = F.scaled_dot_product_attention(split(q), k, v).transpose(1, 2).flatten(2)
        h = h + self.to_out(a)
        g1, g2 = self.fc1(self.ff_norm(h)).chunk(2, dim=-1)
        h = h + self.fc2(g1 * F.gelu(g2))
        m = pool_mask.unsqueeze(-1).to(h.dtype)
        return F.normalize((h * m).sum(1) / m.sum(1), dim=-1)


def build_reference(model_cfg, dtype=torch.float32):
    """transformers backbone (random weights of the same shapes) + PEFT LoRA + plain head."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaModel, MistralConfig, MistralModel

    b = model_cfg.backbone
    kwargs = dict(vocab_size=b.vocab_size, hidden_size=b.hidden_size, intermediate_size=b.ffn_hidden_size,
                  num_hidden_layers=b.num_layers, num_attention_heads=b.num_attention_heads,
                  num_key_value_heads=b.num_query_groups, max_position_embeddings=b.max_position_embeddings,
                  rope_theta=b.rope_theta, rms_norm_eps=b.norm_eps, attn_implementation="sdpa", dtype=dtype)
    backbone = MistralModel(MistralConfig(**kwargs)) if b.family == "mistral" else LlamaModel(LlamaConfig(**kwargs))
    lora = model_cfg.lora
    backbone = get_peft_model(backbone, LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    p = model_cfg.pooling
    head = PlainLatentAttention(b.hidden_size, p.num_latents, p.num_heads, p.dim_head, p.ff_mult)
    return backbone, head


def embed(backbone, head, batch) -> torch.Tensor:
    dev = next(head.parameters()).device
    ids, att, pool = batch.input_ids.to(dev), batch.attention_mask.to(dev), batch.pool_mask.to(dev)
    s = ids.shape[1]
    blocked = ~att.bool()[:, None, None, :].expand(-1, 1, s, s)  # [b, 1, s, s], non-causal
    mask = torch.zeros(blocked.shape, device=dev).masked_fill(blocked, torch.finfo(torch.float32).min)
    hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    return head(hidden, pool)


def step_loss(backbone, head, queries, docs, k: int, temperature: float) -> torch.Tensor:
    """InfoNCE, one process holding the whole batch: own hard negatives + all in-batch passages."""
    q = embed(backbone, head, queries).float()  # [b, d]
    d = embed(backbone, head, docs).float()  # [b*(1+k), d]
    scores = q @ d.T / temperature  # [b, b*(1+k)]
    target = torch.arange(q.shape[0], device=q.device) * (1 + k)
    return F.cross_entropy(scores, target)
