"""NV-Embed's text handling (paper section 3.3; released model's ``is_mask_instruction``/``add_eos``).

A query with an instruction becomes ``Instruct: {instruction}\\nQuery: {text}``; documents get no
prefix. EOS is appended to every text and batches are right-padded.

What is pooled (``pool_span``), precisely:

- ``exact`` (ours): the tokens that cover at least one character of the text itself, plus the
  appended EOS. BOS and the instruction prefix are attended to but not pooled. We decide this from
  the tokenizer's character offsets of the joint string (a token straddling the boundary, such as
  SentencePiece's "▁word" whose space belongs to the prefix, counts as text), rather than by
  counting the prefix's tokens separately, which can disagree with the joint tokenization.
- ``nvembed_v2``: the released NV-Embed-v2 client's ``encode``: every real token is pooled (BOS
  included, so documents pool BOS) except the first ``N`` positions of a query, where ``N`` is the
  number of tokens of the prefix tokenized alone, without special tokens
  (``len(tokenizer.tokenize(prefix))``). With a BOS tokenizer those ``N`` positions are BOS and all
  but the last prefix token (or all of the prefix when the joint tokenization merges across the
  boundary differently). Imported NV-Embed-v2 checkpoints use it by default, so that our ``encode``
  reproduces NVIDIA's numbers.

Both keep EOS when a text is cut at ``max_length`` (the released client cuts after appending it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerFast

POOL_SPANS = ("exact", "nvembed_v2")  # which tokens are pooled (module docstring); validated by models/config.py


@dataclass
class Batch:
    """Right-padded tokenised texts. ``lengths`` and ``pool_starts`` are host copies (Python ints) of
    what the masks say: row i's real tokens are ``[0, lengths[i])`` and its pooled tokens
    ``[pool_starts[i], lengths[i])`` (the pooled span is always a suffix: the text after the
    instruction, then EOS). Chunk planning and packing read them, never the tensors, so a step
    needs no device->host read to plan its chunks."""
    input_ids: torch.Tensor  # [b, s]
    attention_mask: torch.Tensor  # [b, s] 1 for real tokens
    pool_mask: torch.Tensor  # [b, s] 1 for tokens pooled into the embedding
    num_truncated: int = 0
    lengths: list[int] | None = None  # [b] real tokens per row; None: read from attention_mask once
    pool_starts: list[int] | None = None  # [b] first pooled token per row; None: read from pool_mask once

    def __post_init__(self):
        if self.lengths is None:  # a batch built from tensors alone (tests, callers outside TextEncoder)
            self.lengths = self.attention_mask.sum(1).tolist()
        if self.pool_starts is None:
            pooled = self.pool_mask.sum(1).tolist()
            self.pool_starts = [n - p for n, p in zip(self.lengths, pooled)]


def load_tokenizer(tokenizer_cfg, file: str) -> PreTrainedTokenizerFast:
    t = tokenizer_cfg
    tok = PreTrainedTokenizerFast(
        tokenizer_file=file, bos_token=t.bos_token, eos_token=t.eos_token, pad_token=t.pad_token or t.eos_token
    )
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer {file}: eos_token {t.eos_token!r} is not in its vocabulary")
    if t.add_bos and tok.bos_token_id is None:
        raise ValueError(f"tokenizer {file}: add_bos is true but bos_token {t.bos_token!r} is unknown")
    return tok


class TextEncoder:
    """Turns texts (+ optional instruction) into padded id/attention/pool-mask tensors."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, query_template: str, add_bos: bool, max_length: int,
                 pool_span: str):
        if pool_span not in POOL_SPANS:
            raise ValueError(f"pool_span {pool_span!r} is not one of {POOL_SPANS}")
        self.tok, self.template, self.add_bos, self.max_length = tokenizer, query_template, add_bos, max_length
        self.pool_span = pool_span

    def prefix(self, instruction: str | None) -> str:
        return "" if not instruction else self.template.format(instruction=instruction)

    def encode_one(self, text: str, instruction: str | None, max_length: int | None = None) -> tuple[list[int], list[int], bool]:
        """(ids, pool flags, truncated?) for one text; ids include BOS (if configured) and EOS."""
        max_length = max_length or self.max_length
        prefix = self.prefix(instruction)
        enc = self.tok(prefix + text, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        pool = [1 if end > len(prefix) else 0 for _, end in enc["offset_mapping"]]
        n_prefix = pool.index(1) if 1 in pool else len(pool)
        budget = max_length - 1 - int(self.add_bos)  # room for text tokens after BOS, before EOS
        if n_prefix >= budget:
            raise ValueError(f"instruction prefix is {n_prefix} tokens; max_length={max_length} leaves no room for text")
        truncated = len(ids) > budget
        ids, pool = ids[:budget], pool[:budget]
        if self.add_bos:
            ids, pool = [self.tok.bos_token_id] + ids, [0] + pool
        ids, pool = ids + [self.tok.eos_token_id], pool + [1]
        if self.pool_span == "nvembed_v2":  # the released client: mask len(tokenize(prefix)) leading positions
            n_masked = len(self.tok(prefix, add_special_tokens=False)["input_ids"]) if prefix else 0
            pool = [int(i >= n_masked) for i in range(len(ids))]
        return ids, pool, truncated

    def __call__(self, texts: list[str], instruction: str | list[str | None] | None = None,
                 max_length: int | None = None) -> Batch:
        instructions = instruction if isinstance(instruction, list) else [instruction] * len(texts)
        rows = [self.encode_one(t, i, max_length) for t, i in zip(texts, instructions)]
        s = max(len(r[0]) for r in rows)
        ids = torch.full((len(rows), s), self.tok.pad_token_id, dtype=torch.long)
        att = torch.zeros(len(rows), s, dtype=torch.long)
        pool = torch.zeros(len(rows), s, dtype=torch.long)
        starts = []
        for i, (r_ids, r_pool, _) in enumerate(rows):  # right padding
            ids[i, : len(r_ids)] = torch.tensor(r_ids)
            att[i, : len(r_ids)] = 1
            pool[i, : len(r_pool)] = torch.tensor(r_pool)
            start = len(r_pool) - sum(r_pool)
            if any(r_pool[:start]) or not all(r_pool[start:]):  # Batch's contract: the pooled span is a suffix
                raise AssertionError(f"pool flags are not a suffix: {r_pool}")
            starts.append(start)
        return Batch(ids, att, pool, sum(r[2] for r in rows), [len(r[0]) for r in rows], starts)
