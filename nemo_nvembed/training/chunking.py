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
from nemo_nvembed.models.packing import Pack, cut_sorted
from nemo_nvembed.parallel import distributed


@dataclass
class Chunk:
    index: torch.Tensor  # [c] positions of the chunk's sequences in the batch
    length: int  # padded: the chunk's padded length (its longest sequence); packed: its tokens
    packed: bool = False  # the sequences end to end, no padding (models/packing.py)
    _pack: object = None  # the Pack, built once and reused by GradCache's second pass

    @property
    def rows(self) -> list[int]:
        """``index`` as host ints (made once)."""
        if self._rows is None:
            self._rows = self.index.tolist()
        return self._rows

    _rows: list | None = None

    @property
    def tokens(self) -> int:
        """Tokens the forward processes (padded ones included)."""
        return self.length if self.packed else len(self.index) * self.length


def plan_packs(lengths: list[int], pack_tokens: int) -> list[Chunk]:
    """Packed chunks of at most ``pack_tokens`` real tokens (a longer sequence is a chunk of its
    own): first-fit decreasing over the sequences' lengths (host ints), so chunks are few and full."""
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


def plan_for(batch, chunking_cfg) -> list[Chunk]:
    """The chunks ``train.chunking`` asks for over a tokenised batch (``text.Batch``; planned from its
    host-side ``lengths``): packed by a token budget, or padded (:func:`plan`)."""
    c = chunking_cfg
    if c.packed:
        return plan_packs(batch.lengths, c.pack_tokens)
    return plan(batch.lengths, c.chunk_size, c.length_aware, c.chunk_cost_tokens, c.max_chunk_tokens)


def plan(lengths: list[int], chunk_size: int, length_aware: bool, chunk_cost_tokens: int,
         max_chunk_tokens: int) -> list[Chunk]:
    """Split a batch (its sequences' real lengths, host ints) into chunks (the arguments are
    ``train.chunking``'s); chunk_size 0 = the whole batch in one."""
    n = len(lengths)
    if not length_aware or not chunk_size:
        size = chunk_size or n
        return [Chunk(torch.arange(i, min(n, i + size)), max(lengths[i : i + size])) for i in range(0, n, size)]
    order = sorted(range(n), key=lambda i: -lengths[i])  # stable: ties keep batch order
    cuts = cut_sorted([lengths[i] for i in order], chunk_size, chunk_cost_tokens, max_chunk_tokens)
    return [Chunk(torch.tensor(order[a:b]), lengths[order[a]]) for a, b in zip(cuts, cuts[1:])]


def token_counts(lengths: list[int], chunks: list[Chunk]) -> tuple[int, int]:
    """(real tokens, padded tokens) processed by these chunks."""
    return sum(lengths), sum(c.tokens for c in chunks)


def global_keys(seed: int, step: int, group: int, local_index: list[int], local_size: int) -> list[int]:
    """Dropout keys of local sequences (Python ints: no tensor read): the DP split is contiguous
    (rank r holds global positions [r * local_size, (r + 1) * local_size)), so the key names the
    sequence in the global batch."""
    base = keyed_dropout.key_of(seed, step, group)
    offset = (distributed.dp_rank() if distributed.is_initialized() else 0) * local_size
    return [keyed_dropout.mix32_int((i + offset) ^ base) for i in local_index]


def embed_chunk(model, batch, chunk: Chunk, seed: int, step: int, salt: int, group: int = 0) -> torch.Tensor:
    distributed.reseed_for_step(seed, step, salt)
    idx, s = chunk.index, chunk.length
    dev = next(model.parameters()).device
    rows = chunk.rows
    keys = global_keys(seed, step, group, rows, batch.input_ids.shape[0])
    if chunk.packed:
        if chunk._pack is None:  # built on the host and moved once; GradCache's second pass reuses it
            chunk._pack = Pack.from_rows(batch.input_ids[idx], [batch.lengths[i] for i in rows],
                                         [batch.pool_starts[i] for i in rows]).to(dev)
        pack = chunk._pack
        with keyed_dropout.sequence_keys(keys, pack.segments, pack.positions, pack.max_length):
            return model.forward_packed(pack)  # [c, d]
    with keyed_dropout.sequence_keys(keys):
        return model(batch.input_ids[idx, :s].to(dev), batch.attention_mask[idx, :s].to(dev),
                     batch.pool_mask[idx, :s].to(dev))  # [c, d]


def _restore_order(outs: list[torch.Tensor], chunks: list[Chunk]) -> torch.Tensor:
    order = torch.cat([c.index for c in chunks])  # [n]: batch position of each stacked row (host)
    return torch.cat(outs)[torch.argsort(order).to(outs[0].device)]  # [n, d]


def embed(model, batch, chunks: list[Chunk], seed: int, step: int, group: int) -> torch.Tensor:
    """All chunks' embeddings in batch order, [n, d] (differentiable when grad is enabled)."""
    outs = [embed_chunk(model, batch, c, seed, step, group * 100_003 + i, group) for i, c in enumerate(chunks)]
    return _restore_order(outs, chunks)


def embed_cached(model, batch, chunks: list[Chunk], seed: int, step: int, group: int,
                 keep_last: bool) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """GradCache's first pass: every chunk embedded without gradients into an fp32 leaf that will
    receive the loss's gradient w.r.t. its embeddings; with ``keep_last`` the last chunk runs with
    gradients instead and keeps its graph, so the loss's backward reaches the weights through it
    and :func:`backward_chunks` does not run it again (one forward saved per step; activation
    memory is still one chunk's: it is the last forward before the loss). -> ([n, d] embeddings in
    batch order, the leaves per chunk: None for the kept chunk)."""
    outs, leaves = [], []
    for i, c in enumerate(chunks):
        if keep_last and i == len(chunks) - 1:
            e = embed_chunk(model, batch, c, seed, step, group * 100_003 + i, group).float()
            leaves.append(None)
        else:
            with torch.no_grad():
                e = embed_chunk(model, batch, c, seed, step, group * 100_003 + i, group)
            e = e.float().requires_grad_()
            leaves.append(e)
        outs.append(e)
    return _restore_order(outs, chunks), leaves


def backward_chunks(model, batch, chunks: list[Chunk], leaves: list, seed: int, step: int, group: int) -> None:
    """GradCache's second pass: re-run each chunk with gradients and back-propagate its cached
    embedding gradient (its leaf's ``grad`` from :func:`embed_cached`); a kept chunk (leaf None)
    was back-propagated with the loss."""
    for i, (c, leaf) in enumerate(zip(chunks, leaves)):
        if leaf is None:
            continue
        e = embed_chunk(model, batch, c, seed, step, group * 100_003 + i, group)  # same draws as the first pass
        e.backward(leaf.grad.to(e.dtype))
