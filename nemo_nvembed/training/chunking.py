"""Chunked, length-aware embedding of a tokenised batch (issue: scale and speed).

A local batch of sequences is embedded in chunks of at most ``chunk_size`` sequences. With
``length_aware``, the batch is sorted by real length (longest first) and cut into consecutive
chunks, each trimmed to its own longest sequence; the cuts are chosen by dynamic programming to
minimise ``padded tokens + chunk_cost_tokens x number of chunks`` (``chunk_cost_tokens`` prices one
more forward call in tokens: 0 would give one chunk per distinct length, a large value the fewest
chunks), never more than ``max_chunk_tokens`` padded tokens per chunk when that is set (a memory
bound that does not grow with the batch or its longest text). Without ``length_aware`` chunks are
consecutive runs of ``chunk_size`` in batch order. The embeddings are scattered back to the batch
order, so the loss sees exactly the same examples either way.

Each chunk's random draws are reseeded from (seed, step, group, chunk), and LoRA dropout is keyed
(:mod:`nemo_nvembed.models.keyed_dropout`) by (seed, step, group, the sequence's position in the
global batch): the GradCache second pass replays the first pass's dropout exactly, a resumed run
replays an uninterrupted one's, and TP x DP layouts and chunkings draw what one process with the
whole batch draws.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from nemo_nvembed.models import keyed_dropout
from nemo_nvembed.models.packing import Pack
from nemo_nvembed.parallel import distributed


@dataclass
class Chunk:
    index: torch.Tensor  # [c] positions of the chunk's sequences in the batch
    length: int  # padded: the chunk's padded length (its longest sequence); packed: its tokens
    packed: bool = False  # the sequences end to end, no padding (models/packing.py)
    _pack: object = None  # the Pack, built once and reused by GradCache's second pass

    @property
    def tokens(self) -> int:
        """Tokens the forward processes (padded ones included)."""
        return self.length if self.packed else len(self.index) * self.length


def plan_packs(attention_mask: torch.Tensor, pack_tokens: int) -> list[Chunk]:
    """Packed chunks of at most ``pack_tokens`` real tokens (a longer sequence is a chunk of its
    own): first-fit decreasing over the sequences' lengths, so chunks are few and full."""
    lengths = attention_mask.sum(1).tolist()  # [n] (CPU batch: no device sync)
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        j = next((j for j, r in enumerate(room) if r >= lengths[i]), None)
        if j is None:
            bins.append([i])
            room.append(pack_tokens - lengths[i])
        else:
            bins[j].append(i)
            room[j] -= lengths[i]
    return [Chunk(torch.tensor(b), sum(lengths[i] for i in b), packed=True) for b in bins]


def plan_for(attention_mask: torch.Tensor, chunking_cfg) -> list[Chunk]:
    """The chunks ``train.chunking`` asks for: packed by a token budget, or padded (:func:`plan`)."""
    c = chunking_cfg
    if c.packed:
        return plan_packs(attention_mask, c.pack_tokens)
    return plan(attention_mask, c.chunk_size, c.length_aware, c.chunk_cost_tokens, c.max_chunk_tokens)


def plan(attention_mask: torch.Tensor, chunk_size: int, length_aware: bool, chunk_cost_tokens: int,
         max_chunk_tokens: int) -> list[Chunk]:
    """Split a batch ([n, s] attention mask) into chunks (the arguments are ``train.chunking``'s);
    chunk_size 0 = the whole batch in one."""
    n = attention_mask.shape[0]
    lengths = attention_mask.sum(1)  # [n]
    if not length_aware or not chunk_size:
        size = chunk_size or n
        return [Chunk(torch.arange(i, min(n, i + size)), int(lengths[i : i + size].max())) for i in range(0, n, size)]
    order = torch.argsort(lengths, descending=True, stable=True)
    cuts = _cuts(lengths[order].tolist(), chunk_size, chunk_cost_tokens, max_chunk_tokens)
    return [Chunk(order[a:b], int(lengths[order[a]])) for a, b in zip(cuts, cuts[1:])]


def _cuts(desc: list[int], size: int, cost: int, max_tokens: int) -> list[int]:
    """Chunk boundaries over lengths sorted longest first: minimise padded tokens + cost x chunks,
    at most ``size`` sequences and ``max_tokens`` padded tokens (0: no limit) per chunk; a single
    sequence longer than ``max_tokens`` is a chunk of its own. O(n x size)."""
    n = len(desc)
    best, prev = [0] + [float("inf")] * n, [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(max(0, end - size), end):  # chunk = desc[start:end], padded to desc[start]
            padded = (end - start) * desc[start]
            if max_tokens and padded > max_tokens and end - start > 1:
                continue
            total = best[start] + padded + cost
            if total < best[end]:
                best[end], prev[end] = total, start
    cuts = [n]
    while cuts[-1]:
        cuts.append(prev[cuts[-1]])
    return cuts[::-1]


def token_counts(attention_mask: torch.Tensor, chunks: list[Chunk]) -> tuple[int, int]:
    """(real tokens, padded tokens) processed by these chunks."""
    real = int(attention_mask.sum())
    padded = sum(c.tokens for c in chunks)
    return real, padded


def global_keys(seed: int, step: int, group: int, local_index: torch.Tensor, local_size: int) -> torch.Tensor:
    """Dropout keys of local sequences: the DP split is contiguous (rank r holds global positions
    [r * local_size, (r + 1) * local_size)), so the key names the sequence in the global batch."""
    base = keyed_dropout.key_of(seed, step, group)
    pos = local_index.to(torch.int64) + (distributed.dp_rank() if distributed.is_initialized() else 0) * local_size
    return keyed_dropout.mix32(pos ^ base)


def embed_chunk(model, batch, chunk: Chunk, seed: int, step: int, salt: int, group: int = 0) -> torch.Tensor:
    distributed.reseed_for_step(seed, step, salt)
    idx, s = chunk.index, chunk.length
    dev = next(model.parameters()).device
    keys = global_keys(seed, step, group, idx, batch.input_ids.shape[0])
    if chunk.packed:
        if chunk._pack is None:  # built on the host and moved once; GradCache's second pass reuses it
            chunk._pack = Pack.from_padded(batch.input_ids[idx], batch.attention_mask[idx], batch.pool_mask[idx]).to(dev)
        pack = chunk._pack
        with keyed_dropout.sequence_keys(keys, pack.segments, pack.positions):
            return model.forward_packed(pack)  # [c, d]
    with keyed_dropout.sequence_keys(keys):
        return model(batch.input_ids[idx, :s].to(dev), batch.attention_mask[idx, :s].to(dev),
                     batch.pool_mask[idx, :s].to(dev))  # [c, d]


def embed(model, batch, chunks: list[Chunk], seed: int, step: int, group: int) -> torch.Tensor:
    """All chunks' embeddings in batch order, [n, d] (differentiable when grad is enabled)."""
    outs = [embed_chunk(model, batch, c, seed, step, group * 100_003 + i, group) for i, c in enumerate(chunks)]
    order = torch.cat([c.index for c in chunks])  # [n]: batch position of each stacked row
    inverse = torch.argsort(order)  # on order's device (the batch's: CUDA under Lightning)
    return torch.cat(outs)[inverse.to(outs[0].device)]  # [n, d]


def backward_chunks(model, batch, chunks: list[Chunk], grad: torch.Tensor, seed: int, step: int, group: int) -> None:
    """GradCache's second pass: re-run each chunk with gradients and back-propagate its cached
    embedding gradient (``grad``: [n, d] in batch order)."""
    for i, c in enumerate(chunks):
        e = embed_chunk(model, batch, c, seed, step, group * 100_003 + i, group)  # same draws as the first pass
        e.backward(grad[c.index.to(grad.device)].to(e.dtype))
