"""sentence-transformers input module for an NV-Embed export (``SentenceTransformer(dir, trust_remote_code=True)``).

The folder's pipeline is this module -> ``Pooling`` (mean) -> ``Normalize``. This module tokenizes
``prompt + text`` with NV-Embed's text handling (``modeling_nvembed.text_inputs``: BOS, EOS,
right padding, the pooled span of ``config.pool_span``), runs the backbone with bidirectional
attention and the latent-attention block, and hands ``Pooling`` the per-token outputs with the
pooled span as its mask. A prompt is the whole query prefix (``"Instruct: {task}\\nQuery: "``);
the folder's ``config_sentence_transformers.json`` names one per task (``prompt_name="NQ"``).

The pooled span is decided per text from the joint tokenization, so ``Pooling`` gets it as its
mask rather than a prompt length; the backbone still attends to every real token.
"""
from __future__ import annotations

from sentence_transformers.base.modules.transformer import Transformer

from .modeling_nvembed import text_inputs


class NVEmbedTransformer(Transformer):
    def preprocess(self, inputs, prompt: str | None = None, **kwargs) -> dict:
        texts = list(inputs)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("NV-Embed exports embed text only: pass strings")
        features = text_inputs(self.tokenizer, texts, prompt or "", self.tokenizer.model_max_length,
                               self.model.config.pool_span)
        features["modality"] = "text"
        return features

    def forward(self, features: dict, **kwargs) -> dict:
        h = self.model.token_embeddings(features["input_ids"], features["attention_mask"])  # [b, s, d]
        # A new dict: the caller's features keep the backbone's mask (losses may re-run forward on them).
        return {**features, "token_embeddings": h, "attention_mask": features["pool_mask"]}
