"""NV-Embed model exported by nemo_nvembed, for ``AutoModel.from_pretrained(dir, trust_remote_code=True)``.

NV-Embed-v2's interface: ``NVEmbedModel.forward(input_ids, attention_mask, pool_mask)`` returns
``{"sentence_embeddings": [b, d]}``; ``model.encode(prompts, instruction=..., max_length=...)``
where ``instruction`` is the whole query prefix (``"Instruct: {task}\\nQuery: "``), ``""`` for
documents. Weights: ``embedding_model.*`` (the backbone, Hugging Face Mistral/Llama names) and
``latent_attention_model.*`` (the pooling head).

Text handling (``config.pool_span``, the same rules as ``nemo_nvembed/models/text.py``): BOS when
the tokenizer adds one, the text, EOS; right padding; cut at ``max_length`` keeping EOS.
``exact`` pools the tokens that cover a character of the text, plus EOS (never BOS or the
prefix); ``nvembed_v2`` pools every real token except the first ``len(tokenize(prefix))``
positions (the released client's ``encode``; documents pool BOS).

Bidirectional attention: each backbone gets a ready 4-D additive mask over the non-padding keys
(so no causal mask is built, in any transformers version) and its attention modules are marked
non-causal; eager and sdpa attention are supported.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaModel, MistralModel, PreTrainedModel

from .configuration_nvembed import (BidirectionalLlamaConfig, BidirectionalMistralConfig, LatentAttentionConfig,
                                    NVEmbedConfig)


# ---------------------------------------------------------------------------------------------- backbone
def bidirectional_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[b, s] 1 = real token -> [b, 1, s, s] additive mask: every query sees every real key."""
    blocked = ~attention_mask.bool()[:, None, None, :]  # [b, 1, 1, s]
    mask = torch.zeros(blocked.shape, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill(blocked, torch.finfo(dtype).min).expand(-1, 1, attention_mask.shape[1], -1)


class _Bidirectional:
    """Mixin for a Hugging Face decoder (``embed_tokens``, ``layers``): full attention over real tokens."""

    def _make_non_causal(self):
        for layer in self.layers:
            layer.self_attn.is_causal = False

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, **kwargs):
        if self.config._attn_implementation not in (None, "eager", "sdpa"):
            raise ValueError(f"attn_implementation={self.config._attn_implementation!r}: this bidirectional model "
                             f"supports 'eager' and 'sdpa'")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)  # [b, s, d]
        if attention_mask is None:
            attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        if attention_mask.dim() == 2:
            attention_mask = bidirectional_mask(attention_mask, inputs_embeds.dtype)  # [b, 1, s, s]
        kwargs["use_cache"] = False
        return super().forward(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)


class BidirectionalMistralModel(_Bidirectional, MistralModel):
    config_class = BidirectionalMistralConfig

    def __init__(self, config):
        super().__init__(config)
        self._make_non_causal()


class BidirectionalLlamaModel(_Bidirectional, LlamaModel):
    config_class = BidirectionalLlamaConfig

    def __init__(self, config):
        super().__init__(config)
        self._make_non_causal()


TEXT_MODELS = {"bidir_mistral": BidirectionalMistralModel, "bidir_llama": BidirectionalLlamaModel,
               "mistral": MistralModel, "llama": LlamaModel}


# ---------------------------------------------------------------------------------------------- head
class _PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module, context_dim: int | None = None):
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(context_dim) if context_dim is not None else None

    def forward(self, x, context=None):
        if self.norm_context is None:
            return self.fn(self.norm(x))
        return self.fn(self.norm(x), self.norm_context(context))


class _CrossAttention(nn.Module):
    """Token states are the queries; the latents give keys and values; no mask."""

    def __init__(self, dim: int, context_dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * heads * dim_head, bias=False)  # first half K, second half V
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, x, context):
        b, s, _ = x.shape

        def split(t):  # [b, n, heads*dh] -> [b, heads, n, dh]
            return t.view(b, t.shape[1], self.heads, self.dim_head).transpose(1, 2)

        k, v = self.to_kv(context).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(split(self.to_q(x)), split(k), split(v))  # [b, heads, s, dh]
        return self.to_out(out.transpose(1, 2).reshape(b, s, self.heads * self.dim_head))


class _GEGLU(nn.Module):
    def forward(self, x):
        a, gate = x.chunk(2, dim=-1)
        return a * F.gelu(gate)


class _FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 2 * mult * dim), _GEGLU(), nn.Linear(mult * dim, dim))

    def forward(self, x):
        return self.net(x)


class LatentAttentionModel(nn.Module):
    """NV-Embed's pooling head: cross-attention to trained latents + GEGLU MLP, then a masked mean."""

    def __init__(self, config: LatentAttentionConfig):
        super().__init__()
        d, dc = config.latent_dim, config.hidden_dim
        self.cross_attend_blocks = nn.ModuleList([
            _PreNorm(d, _CrossAttention(d, dc, config.num_cross_heads, config.cross_dim_head), context_dim=dc),
            _PreNorm(d, _FeedForward(d, config.ff_mult)),
        ])
        self.latents = nn.Parameter(torch.randn(config.num_latents_value, dc))
        self.output_normalize = config.output_normalize

    def token_states(self, hiddens: torch.Tensor) -> torch.Tensor:
        """[b, s, d] backbone states -> [b, s, d] per-token head outputs (before the mean)."""
        attn, ff = self.cross_attend_blocks
        latents = self.latents.unsqueeze(0).expand(hiddens.shape[0], -1, -1)  # [b, r, d]
        h = attn(hiddens, context=latents) + hiddens
        return ff(h) + h

    def forward(self, hiddens: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
        h = self.token_states(hiddens)  # [b, s, d]
        m = pool_mask.to(h.dtype).unsqueeze(-1)  # [b, s, 1]
        pooled = (h * m).sum(1) / m.sum(1)  # [b, d]
        return F.normalize(pooled, p=2, dim=-1) if self.output_normalize else pooled


# ---------------------------------------------------------------------------------------------- text
def adds_bos(tokenizer) -> bool:
    return tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]


def text_inputs(tokenizer, texts: list[str], prefix: str, max_length: int, pool_span: str) -> dict:
    """input_ids, attention_mask, pool_mask ([b, s] each) for ``prefix + text`` under NV-Embed's text handling."""
    bos = adds_bos(tokenizer)
    budget = max_length - 1 - int(bos)  # text tokens between BOS and EOS
    n_masked = len(tokenizer(prefix, add_special_tokens=False)["input_ids"]) if prefix else 0
    rows = []
    for text in texts:
        enc = tokenizer(prefix + text, add_special_tokens=False, return_offsets_mapping=True)
        ids, pool = enc["input_ids"], [int(end > len(prefix)) for _, end in enc["offset_mapping"]]
        if (pool.index(1) if 1 in pool else len(pool)) >= budget:
            raise ValueError(f"the prefix leaves no room for text within max_length={max_length}")
        ids, pool = ids[:budget], pool[:budget]
        if bos:
            ids, pool = [tokenizer.bos_token_id] + ids, [0] + pool
        ids, pool = ids + [tokenizer.eos_token_id], pool + [1]
        if pool_span == "nvembed_v2":
            pool = [int(i >= n_masked) for i in range(len(ids))]
        rows.append((ids, pool))
    s = max(len(ids) for ids, _ in rows)
    out = {"input_ids": torch.full((len(rows), s), tokenizer.pad_token_id, dtype=torch.long),
           "attention_mask": torch.zeros(len(rows), s, dtype=torch.long),
           "pool_mask": torch.zeros(len(rows), s, dtype=torch.long)}
    for i, (ids, pool) in enumerate(rows):  # right padding
        out["input_ids"][i, : len(ids)] = torch.tensor(ids)
        out["attention_mask"][i, : len(ids)] = 1
        out["pool_mask"][i, : len(ids)] = torch.tensor(pool)
    return out


# ---------------------------------------------------------------------------------------------- model
class NVEmbedModel(PreTrainedModel):
    config_class = NVEmbedConfig
    _no_split_modules = ["MistralDecoderLayer", "LlamaDecoderLayer", "LatentAttentionModel"]
    _supports_sdpa = True

    def __init__(self, config: NVEmbedConfig):
        super().__init__(config)
        self.latent_attention_model = LatentAttentionModel(config.latent_attention_config)
        self.embedding_model = TEXT_MODELS[config.text_config.model_type](config.text_config)
        self.tokenizer = self._load_tokenizer(config)
        self.post_init()

    @staticmethod
    def _load_tokenizer(config):
        # The export writes a fast tokenizer; AutoTokenizer would consult this folder's remote config again.
        from transformers import PreTrainedTokenizerFast

        for path in (config.name_or_path, getattr(config.text_config, "_name_or_path", "")):
            if path:
                try:
                    tok = PreTrainedTokenizerFast.from_pretrained(path)
                except (OSError, ValueError):
                    continue
                tok.padding_side = config.padding_side
                return tok
        return None  # built from a config alone: pass a tokenizer to encode()

    def _init_weights(self, module):
        pass  # every weight comes from the checkpoint

    def token_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Per-token head outputs [b, s, d]; their mean over the pool mask is the embedding."""
        h = self.embedding_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.latent_attention_model.token_states(h)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pool_mask: torch.Tensor | None = None,
                return_dict: bool = True):
        h = self.embedding_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [b, s, d]
        embeds = self.latent_attention_model(h, attention_mask if pool_mask is None else pool_mask)  # [b, d]
        return {"sentence_embeddings": embeds} if return_dict else (embeds,)

    @torch.no_grad()
    def encode(self, prompts: list[str], instruction: str = "", max_length: int | None = None, batch_size: int = 32,
               tokenizer=None, **kwargs) -> torch.Tensor:
        """[n, d] embeddings; ``instruction`` is the whole query prefix, e.g.
        ``config.query_template.format(instruction="Given a question, retrieve ...")``; ``""`` for documents."""
        tok = tokenizer or self.tokenizer
        if tok is None:
            raise ValueError("no tokenizer: load with from_pretrained(folder) or pass tokenizer=")
        max_length = max_length or self.config.max_length
        device = next(self.parameters()).device
        out = []
        for i in range(0, len(prompts), batch_size):
            batch = text_inputs(tok, list(prompts[i: i + batch_size]), instruction, max_length, self.config.pool_span)
            out.append(self(**{k: v.to(device) for k, v in batch.items()})["sentence_embeddings"])
        return torch.cat(out)
