"""Contrastive InfoNCE loss on cosine similarity (NV-Embed, arXiv 2405.17428, section 3.3).

GRADIENT CONTRACT (read this before wiring the trainer):
    Each rank returns  loss = sum over ITS local queries of CE_i / global_batch_size.
    The training strategy must all-reduce parameter gradients with SUM over the data-parallel
    group (not AVG). The summed gradient is then exactly the gradient of the single-process
    mean loss over the whole global batch, in-batch negatives included (the all_gather below is
    differentiable and returns to each rank the gradient that every rank's queries put on its
    passages). Averaging instead would give 1/dp_size of it (the pitfall of Tevatron issue 143);
    with an averaging strategy, multiply this loss by dp_size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nemo_nvembed.data.teacher import text_hash
from nemo_nvembed.parallel.gather import all_gather as differentiable_all_gather


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, this rank's share: sum of local CE / global_batch_size
    global_loss: torch.Tensor  # scalar, detached: mean CE over the global batch (for logging)
    num_masked: torch.Tensor  # scalar long, local: gathered candidates masked as positive duplicates
    num_candidates: torch.Tensor  # [b] long: candidates each query scored (own pos included)
    accuracy: torch.Tensor  # scalar, detached: local fraction of queries ranking their positive first
    distill_loss: Optional[torch.Tensor] = None  # scalar, detached: mean teacher cross-entropy over the global batch


@dataclass
class Teacher:
    """A teacher's embeddings of this rank's texts (``train.distill``): its softmax over each query's
    candidates, cosine / ``temperature``, is a soft target beside the positive (knowledge distillation)."""

    q: torch.Tensor  # [b, e]
    pos: torch.Tensor  # [b, e]
    neg: torch.Tensor  # [b, k, e]
    weight: float  # loss = InfoNCE + weight x cross-entropy to the teacher's softmax
    temperature: float


def key_hashes(keys: Sequence[str], device: torch.device) -> torch.Tensor:
    """[n] int64 stable 8-byte blake2b hashes of `keys` (same on every rank and run)."""
    return torch.tensor([text_hash(k) for k in keys], dtype=torch.int64, device=device)


def repeated_slots(neg_hashes: torch.Tensor) -> torch.Tensor:
    """[n, k] bool: slot j repeats the key of an earlier slot of the same row (padding)."""
    k = neg_hashes.shape[1]
    same = neg_hashes[:, :, None] == neg_hashes[:, None, :]  # [n, k, k]: slot j vs slot j'
    earlier = torch.ones(k, k, dtype=torch.bool, device=neg_hashes.device).tril(-1)  # [k, k]: j' < j
    return (same & earlier).any(-1)  # [n, k]


def _world(group) -> tuple[int, int]:
    if group is None or not dist.is_available() or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def contrastive_loss(
    q: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    *,
    temperature: float,
    in_batch: torch.Tensor,
    pos_keys: Sequence[str],
    neg_keys: Sequence[Sequence[str]],
    global_batch_size: int,
    group: Optional[dist.ProcessGroup] = None,
    any_in_batch: Optional[bool] = None,
    teacher: Optional[Teacher] = None,
) -> LossOutput:
    """InfoNCE over cosine similarities / temperature, with optional global in-batch negatives.

    Inputs (this rank's share of the global batch; b * world_size == global_batch_size):
      q [b, d], pos [b, d], neg [b, k, d]: embeddings (normalised here; computed in fp32).
      in_batch [b] bool: query i also scores every positive and every hard negative of the
        GLOBAL batch (all ranks of `group`). NV-Embed stage 1 uses in-batch + 7 hard negatives,
        stage 2 the query's own hard negatives only (Table 5): all False.
      pos_keys [b], neg_keys [b][k]: identity of each passage (document id when the data has
        ids, else the text). A gathered candidate whose key equals query i's positive key is
        masked (-inf): a duplicate of the positive must not act as a negative
        (sentence-transformers issue 3189). A hard negative whose key repeats an EARLIER negative
        of the same query is padding (few-label tasks, resampled negatives: see
        nemo_nvembed/data/jsonl.py) and is masked everywhere it appears, so a query with k slots
        but m < k distinct negatives is scored exactly as if it had those m negatives only.
      group: the data-parallel process group; None or size 1 means one process.
      any_in_batch: whether any query of the GLOBAL batch has in_batch (the batch stream knows it
        on the host); None: decided here by reading in_batch and, over ranks, one MAX all-reduce
        (a device->host read).
      teacher: a teacher's embeddings of the same texts (not in the paper; ``train.distill``). Each
        query's loss adds weight x the cross-entropy from the teacher's softmax over the same
        candidates (the same masks; teacher passages gathered like the student's) to the student's.

    Candidates of query i (global index g = rank * b + i), in logit order:
      [own pos, own k negs] + (if any rank has in_batch) [all G positives, all G*k negatives]
      where G = global_batch_size, gathered rank by rank (row r*b + j is rank r's query j; see
      sentence-transformers PR 3453 for what a wrong order does). In the gathered block, query
      i's own rows are excluded (they appear once, in the own block) and everything is excluded
      for queries with in_batch False. The target is always column 0.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    b, d = q.shape
    k = neg.shape[1]
    if pos.shape != (b, d) or neg.shape != (b, k, d) or in_batch.shape != (b,):
        raise ValueError(
            f"shape mismatch: q {tuple(q.shape)}, pos {tuple(pos.shape)}, neg {tuple(neg.shape)}, "
            f"in_batch {tuple(in_batch.shape)}; expected [b, d], [b, d], [b, k, d], [b]"
        )
    if len(pos_keys) != b or len(neg_keys) != b or any(len(nk) != k for nk in neg_keys):
        raise ValueError(f"pos_keys must have {b} entries and neg_keys {b} lists of {k}")
    rank, world = _world(group)
    if b * world != global_batch_size:
        raise ValueError(
            f"local batch {b} x world size {world} != global_batch_size {global_batch_size}"
        )
    device = q.device
    use_in_batch = bool(in_batch.any()) if any_in_batch is None else any_in_batch
    in_batch = in_batch.to(device=device, dtype=torch.bool)

    neg_h = key_hashes([key for nk in neg_keys for key in nk], device)  # [b*k]
    if world > 1 and any_in_batch is None:  # every rank must take the same collective path
        flag = torch.tensor([int(use_in_batch)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        use_in_batch = bool(flag.item())
    scores = _cosine_scores(q, pos, neg, use_in_batch, group, world, differentiable=True)  # [b, 1 + k (+ G + G*k)]
    mask = torch.zeros(b, 1, dtype=torch.bool, device=device)  # the own positive: never masked
    mask = torch.cat([mask, repeated_slots(neg_h.view(b, k))], dim=1)  # [b, 1 + k]: padding slots out
    num_masked = torch.zeros((), dtype=torch.long, device=device)

    if use_in_batch:
        pos_h = key_hashes(pos_keys, device)  # [b]
        if world > 1:
            pos_parts = [torch.empty_like(pos_h) for _ in range(world)]
            neg_parts = [torch.empty_like(neg_h) for _ in range(world)]
            dist.all_gather(pos_parts, pos_h, group=group)
            dist.all_gather(neg_parts, neg_h, group=group)
            all_pos_h, all_neg_h = torch.cat(pos_parts), torch.cat(neg_parts)  # [G], [G*k]
        else:
            all_pos_h, all_neg_h = pos_h, neg_h
        G = global_batch_size
        cand_owner = torch.cat(
            [torch.arange(G, device=device), torch.arange(G, device=device).repeat_interleave(k)]
        )  # [G + G*k]: global query index each candidate belongs to
        cand_key = torch.cat([all_pos_h, all_neg_h])  # [G + G*k]
        my_global = rank * b + torch.arange(b, device=device)  # [b]
        own_rows = cand_owner[None, :] == my_global[:, None]  # [b, G + G*k]
        duplicate = (cand_key[None, :] == pos_h[:, None]) & ~own_rows  # [b, G + G*k]
        num_masked = (duplicate & in_batch[:, None]).sum()
        padding = torch.cat([torch.zeros(G, dtype=torch.bool, device=device),
                             repeated_slots(all_neg_h.view(G, k)).reshape(G * k)])  # [G + G*k]
        mask = torch.cat([mask, own_rows | duplicate | padding[None, :] | ~in_batch[:, None]], dim=1)

    logits = scores.masked_fill(mask, float("-inf")) / temperature  # [b, 1 + k (+ G + G*k)]
    target = torch.zeros(b, dtype=torch.long, device=device)  # [b], own positive is column 0
    per_query = F.cross_entropy(logits, target, reduction="none")  # [b]
    distill_loss = None
    if teacher is not None:
        with torch.no_grad():
            t_scores = _cosine_scores(teacher.q, teacher.pos, teacher.neg, use_in_batch, group, world, differentiable=False)
            soft = torch.softmax(t_scores.masked_fill(mask, float("-inf")) / teacher.temperature, dim=1)  # [b, C]
        log_p = torch.log_softmax(logits, dim=1).masked_fill(mask, 0.0)  # masked: soft target 0, no 0 x -inf
        distilled = -(soft * log_p).sum(dim=1)  # [b]: cross-entropy from the teacher's softmax
        per_query = per_query + teacher.weight * distilled
        distill_loss = distilled.detach().sum() / global_batch_size
        if world > 1:
            dist.all_reduce(distill_loss, op=dist.ReduceOp.SUM, group=group)
    loss = per_query.sum() / global_batch_size  # scalar, see the gradient contract above

    global_loss = loss.detach().clone()
    if world > 1:
        dist.all_reduce(global_loss, op=dist.ReduceOp.SUM, group=group)
    with torch.no_grad():
        num_candidates = torch.isfinite(logits).sum(dim=1)  # [b]
        accuracy = (logits.argmax(dim=1) == 0).float().mean()
    return LossOutput(
        loss=loss, global_loss=global_loss, num_masked=num_masked,
        num_candidates=num_candidates, accuracy=accuracy, distill_loss=distill_loss,
    )


def _cosine_scores(q, pos, neg, use_in_batch: bool, group, world: int, differentiable: bool) -> torch.Tensor:
    """[b, 1 + k (+ G + G*k)] cosines of each query with its own positive and negatives and, with
    ``use_in_batch``, every positive then every negative of the global batch (rank by rank; fp32)."""
    b, k, d = neg.shape
    qn = F.normalize(q.float(), dim=-1)  # [b, d]
    pn = F.normalize(pos.float(), dim=-1)  # [b, d]
    nn_ = F.normalize(neg.float(), dim=-1)  # [b, k, d]
    own = [(qn * pn).sum(-1, keepdim=True), torch.einsum("bd,bkd->bk", qn, nn_)]  # [b, 1], [b, k]
    if not use_in_batch:
        return torch.cat(own, dim=1)
    if world > 1:
        gather = differentiable_all_gather if differentiable else _all_gather
        all_pn = torch.cat(gather(pn, group=group), dim=0)  # [G, d]
        all_nn = torch.cat(gather(nn_, group=group), dim=0)  # [G, k, d]
    else:
        all_pn, all_nn = pn, nn_
    all_nn = all_nn.reshape(-1, d)  # [G*k, d], row g*k + j = query g's negative j
    return torch.cat([*own, qn @ all_pn.T, qn @ all_nn.T], dim=1)


def _all_gather(x: torch.Tensor, group) -> list[torch.Tensor]:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return parts
