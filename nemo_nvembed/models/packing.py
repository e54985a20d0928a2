"""Packed sequences: the real tokens of several texts end to end in one row, no padding.

A :class:`Pack` is built on the host from a right-padded slice of a batch (``[n, s]`` ids and masks)
and moved to the device once. The network runs it as megatron's THD layout
(``PackedSeqParams(qkv_format="thd")``): attention stays within each sequence
(:mod:`nemo_nvembed.models.sdpa_attention`), RoPE positions restart at every sequence (megatron
applies them per ``cu_seqlens``), LoRA dropout is keyed by (sequence, position in the sequence)
(:mod:`keyed_dropout`), and the pooling head sees only the pooled tokens and pools per sequence
(:meth:`nemo_nvembed.models.pooling.Pooler.forward_packed`). So a packed forward computes what the
padded one computes, without the padding (tests/test_packing.py: embeddings and every gradient).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Pack:
    input_ids: torch.Tensor  # [t] the real tokens of n sequences, end to end
    pool_mask: torch.Tensor  # [t] 1 for tokens pooled into their sequence's embedding
    bounds: list[int]  # [n + 1] host copy of cu_seqlens: sequence i is tokens bounds[i]:bounds[i+1]
    cu_seqlens: torch.Tensor  # [n + 1] int32
    segments: torch.Tensor  # [t] int64: the sequence of each token
    positions: torch.Tensor  # [t] int64: the position of each token in its sequence
    pool_index: torch.Tensor  # [p] int64: the pooled tokens
    pool_segment: torch.Tensor  # [p] int64: their sequences
    pool_count: torch.Tensor  # [n] float: pooled tokens per sequence
    positions_device: torch.Tensor | None = None  # positions on the device (RoPE); set by to()
    _groups: "AttentionGroups | None" = None  # CPU attention's length groups (attention_groups)

    @property
    def num_sequences(self) -> int:
        return len(self.bounds) - 1

    @property
    def max_length(self) -> int:
        return max(b - a for a, b in zip(self.bounds[:-1], self.bounds[1:]))

    @classmethod
    def from_padded(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor, pool_mask: torch.Tensor) -> "Pack":
        """From right-padded [n, s] ids and masks (CPU; reads the masks: for tests and ad-hoc callers)."""
        lengths = attention_mask.sum(1).tolist()
        pooled = pool_mask.sum(1).tolist()
        return cls.from_rows(input_ids, lengths, [n - p for n, p in zip(lengths, pooled)])

    @classmethod
    def from_rows(cls, input_ids: torch.Tensor, lengths: list[int], pool_starts: list[int]) -> "Pack":
        """From right-padded [n, s] ids (CPU) and the host's per-row lengths and first pooled token
        (``text.Batch.lengths``/``pool_starts``: the pooled span is a suffix). No tensor value is read:
        building a pack costs no device->host synchronisation."""
        n, s = input_ids.shape
        bounds = [0]
        for length in lengths:
            bounds.append(bounds[-1] + length)
        t = bounds[-1]
        cu = torch.tensor(bounds, dtype=torch.int64)
        tokens = torch.arange(t)
        segments = torch.searchsorted(cu[1:], tokens, right=True)  # [t]: the sequence of each token
        positions = tokens - cu[:-1][segments]  # [t]
        ids = input_ids.reshape(-1)[segments * s + positions]  # [t]
        pool = (positions >= torch.tensor(pool_starts)[segments]).to(torch.long)  # [t]
        pool_index = torch.tensor([bounds[i] + j for i in range(n) for j in range(pool_starts[i], lengths[i])],
                                  dtype=torch.int64)  # [p]
        counts = torch.tensor([length - start for length, start in zip(lengths, pool_starts)], dtype=torch.float32)
        return cls(ids, pool, bounds, cu.to(torch.int32), segments, positions, pool_index, segments[pool_index], counts)

    def to(self, device: torch.device) -> "Pack":
        """The device tensors moved once (segments/positions stay on the host: dropout keys read them there)."""
        move = {f: getattr(self, f).to(device, non_blocking=True)
                for f in ("input_ids", "pool_mask", "cu_seqlens", "pool_index", "pool_segment", "pool_count")}
        return Pack(move["input_ids"], move["pool_mask"], self.bounds, move["cu_seqlens"], self.segments,
                    self.positions, move["pool_index"], move["pool_segment"], move["pool_count"],
                    self.positions.to(device, non_blocking=True))

    def thd_params(self):
        """megatron's packed-sequence parameters: the THD layout, without ``cu_seqlens``. Given them,
        megatron's unfused RoPE splits every layer's q and k per sequence (``cu_seqlens.tolist()``: a
        device sync and a kernel per sequence, per layer); instead the network gives RoPE one angle per
        token (its position in its sequence, :func:`per_token_rope`), applied to the whole pack at
        once. Our attention kernel reads the boundaries from ``bounds`` (host) and ``cu_seqlens_device``."""
        from megatron.core.packed_seq_params import PackedSeqParams

        params = PackedSeqParams(qkv_format="thd", max_seqlen_q=self.max_length, max_seqlen_kv=self.max_length)
        params.bounds, params.cu_seqlens_device = self.bounds, self.cu_seqlens
        params.cpu_groups = self.attention_groups if self.input_ids.device.type in ("cpu", "meta") else None
        params.pack = self  # CUDA without varlen attention falls back to the groups (sdpa_attention)
        return params

    @property
    def attention_groups(self) -> "AttentionGroups":
        """CPU attention's length groups for this pack (:class:`AttentionGroups`), made once."""
        if self._groups is None:
            self._groups = AttentionGroups.of(self.bounds)
        return self._groups

    def per_token_rope(self, rope: torch.nn.Module):
        """Within the block, megatron's rotary embedding returns [t, 1, dim]: the angles of each packed
        token's position in its own sequence (positions restart at every sequence)."""
        return _PerTokenRope(rope, self.positions_device)

    def segment_mean(self, token_out: torch.Tensor) -> torch.Tensor:
        """[p, d] outputs of the pooled tokens -> [n, d] their mean per sequence."""
        out = torch.zeros(self.num_sequences, token_out.shape[-1], dtype=token_out.dtype, device=token_out.device)
        out.index_add_(0, self.pool_segment, token_out)
        return out / self.pool_count.clamp_min(1.0).to(token_out.dtype)[:, None]

    def unpack(self, token_out: torch.Tensor, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[t, d] -> right-padded ([n, s, d], attention mask [n, s], pool mask [n, s]) for heads that need the padded layout."""
        n, s = self.num_sequences, length or self.max_length
        flat = (self.segments * s + self.positions).to(token_out.device)  # [t] index into [n * s]
        hidden = token_out.new_zeros(n * s, token_out.shape[-1]).index_copy(0, flat, token_out).view(n, s, -1)
        attn = torch.zeros(n * s, dtype=torch.long, device=token_out.device).index_fill_(0, flat, 1).view(n, s)
        pool = torch.zeros(n * s, dtype=self.pool_mask.dtype, device=token_out.device).index_copy(0, flat, self.pool_mask).view(n, s)
        return hidden, attn, pool


class _PerTokenRope:
    """Context manager: ``rope``'s forward returns the angles gathered at each packed token's position."""

    def __init__(self, rope: torch.nn.Module, positions: torch.Tensor):
        self.rope, self.positions = rope, positions

    def __enter__(self):
        original = self.rope.forward
        positions = self.positions

        def forward(max_seq_len, offset=0, packed_seq=False, cp_group=None):
            emb = original(max_seq_len, offset, packed_seq=False, cp_group=cp_group)  # [s, 1, 1, dim]
            return emb[positions].flatten(1, 2)  # [t, 1, dim]: broadcasts over the THD [t, heads, dim]

        self.rope.forward = forward
        return self

    def __exit__(self, *exc):
        del self.rope.forward  # the class's forward again
        return False



GROUP_COST_TOKENS = 64  # CPU attention: one more SDPA call is worth this many padded query rows


def cut_sorted(desc: list[int], size: int, cost: int, max_tokens: int = 0) -> list[int]:
    """Boundaries cutting lengths sorted longest first into consecutive groups that minimise padded
    tokens + ``cost`` x groups, with at most ``size`` items (0: no limit) and ``max_tokens`` padded
    tokens (0: no limit; a single longer item is a group of its own) per group. O(n x size)."""
    n = len(desc)
    size = size or n
    best, prev = [0] + [float("inf")] * n, [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(max(0, end - size), end):  # group = desc[start:end], padded to desc[start]
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


@dataclass
class AttentionGroups:
    """CPU attention over a pack in a few padded SDPA calls instead of one per sequence: the pack's
    sequences sorted by length and cut into groups (:func:`cut_sorted`, ``GROUP_COST_TOKENS``); group
    g is gathered into ``[n_g, s_g]`` (``gather[g]``: the pack row of each slot, padding slots repeat
    a real row and are masked as keys by ``key_mask[g]``), and ``scatter`` ([t]) picks every token's
    output row back out of the groups' outputs stacked end to end. Attention still never crosses
    sequences; CUDA uses one variable-length kernel instead (:mod:`sdpa_attention`)."""
    gather: list[torch.Tensor]  # per group [n_g * s_g] int64 pack rows
    key_mask: list[torch.Tensor]  # per group [n_g, 1, 1, s_g] bool, True = a real key
    shapes: list[tuple[int, int]]  # per group (n_g, s_g)
    scatter: torch.Tensor  # [t] int64 rows of the stacked group outputs

    @classmethod
    def of(cls, bounds: list[int]) -> "AttentionGroups":
        lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        cuts = cut_sorted([lengths[i] for i in order], 0, GROUP_COST_TOKENS)
        gather, key_mask, shapes, where, base = [], [], [], [0] * bounds[-1], 0
        for a, b in zip(cuts, cuts[1:]):
            seqs, s = order[a:b], lengths[order[a]]
            rows, mask = [], []
            for slot, i in enumerate(seqs):
                n = lengths[i]
                rows += [bounds[i] + min(j, n - 1) for j in range(s)]
                mask.append([j < n for j in range(s)])
                for j in range(n):
                    where[bounds[i] + j] = base + slot * s + j
            gather.append(torch.tensor(rows, dtype=torch.int64))
            key_mask.append(torch.tensor(mask).view(len(seqs), 1, 1, s))
            shapes.append((len(seqs), s))
            base += len(seqs) * s
        return cls(gather, key_mask, shapes, torch.tensor(where, dtype=torch.int64))
