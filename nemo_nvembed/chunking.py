"""Chunked, length-aware embedding of a tokenised batch (issue: scale and speed).

A local batch of sequences is embedded in chunks of ``chunk_size`` sequences. With
``length_aware``, chunks group sequences of similar length (sorted by real length, longest first)
and each chunk is trimmed to its own longest sequence, so little compute goes to padding; the
embeddings are scattered back to the batch order, so the loss sees exactly the same examples.

Each chunk's random draws (LoRA dropout) are reseeded from (seed, step, group, chunk): the
GradCache second pass replays the first pass's dropout exactly, and a resumed run replays an
uninterrupted one's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from nemo_nvembed import distributed


@dataclass
class Chunk:
    index: torch.Tensor  # [c] positions of the chunk's sequences in the batch
    length: int  # the chunk's padded length (its longest sequence)


def plan(attention_mask: torch.Tensor, chunk_size: int, length_aware: bool) -> list[Chunk]:
    """Split a batch ([n, s] attention mask) into chunks; chunk_size 0 = one chunk."""
    n = attention_mask.shape[0]
    size = chunk_size or n
    lengths = attention_mask.sum(1)  # [n]
    order = torch.argsort(lengths, descending=True, stable=True) if length_aware else torch.arange(n)
    chunks = []
    for start in range(0, n, size):
        idx = order[start : start + size]
        chunks.append(Chunk(idx, int(lengths[idx].max())))
    return chunks


def token_counts(attention_mask: torch.Tensor, chunks: list[Chunk]) -> tuple[int, int]:
    """(real tokens, padded tokens) processed by these chunks."""
    real = int(attention_mask.sum())
    padded = sum(len(c.index) * c.length for c in chunks)
    return real, padded


def embed_chunk(model, batch, chunk: Chunk, seed: int, step: int, salt: int) -> torch.Tensor:
    distributed.reseed_for_step(seed, step, salt)
    idx, s = chunk.index, chunk.length
    dev = next(model.parameters()).device
    return model(batch.input_ids[idx, :s].to(dev), batch.attention_mask[idx, :s].to(dev),
                 batch.pool_mask[idx, :s].to(dev))  # [c, d]


def embed(model, batch, chunks: list[Chunk], seed: int, step: int, group: int) -> torch.Tensor:
    """All chunks' embeddings in batch order, [n, d] (differentiable when grad is enabled)."""
    outs = [embed_chunk(model, batch, c, seed, step, group * 100_003 + i) for i, c in enumerate(chunks)]
    order = torch.cat([c.index for c in chunks])  # [n]: batch position of each stacked row
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    return torch.cat(outs)[inverse.to(outs[0].device)]  # [n, d]


def backward_chunks(model, batch, chunks: list[Chunk], grad: torch.Tensor, seed: int, step: int, group: int) -> None:
    """GradCache's second pass: re-run each chunk with gradients and back-propagate its cached
    embedding gradient (``grad``: [n, d] in batch order)."""
    for i, c in enumerate(chunks):
        e = embed_chunk(model, batch, c, seed, step, group * 100_003 + i)  # same draws as the first pass
        e.backward(grad[c.index.to(grad.device)].to(e.dtype))
