"""The contrastive training step over the local batch, plain or GradCache (paper section 3.3, Table 5).

Called by the training step of :class:`nemo_nvembed.training.nemo_model.NVEmbedModel`
on its network.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from nemo_nvembed.parallel import distributed
from nemo_nvembed.training import chunking
from nemo_nvembed.training.batches import ContrastiveBatch
from nemo_nvembed.training.loss import Teacher, contrastive_loss


class ContrastiveObjective:
    """One contrastive step over the local batch, plain or GradCache (Gao et al., 2021).

    Plain: embed every chunk with gradients, compute the loss; the caller back-propagates it.
    GradCache: embed every chunk without gradients, compute the loss (including the cross-rank
    gather) and its gradient w.r.t. the embeddings, then re-run each chunk with gradients and
    back-propagate the cached embedding gradients, so activation memory is one chunk's whatever
    the batch size. Both modes chunk identically and replay identical dropout, so they give the
    same loss and gradients (tested). ``step`` returns (loss to back-propagate or None, LossOutput).
    None: the step is skipped (non-finite loss, ``train.nonfinite_loss=skip``) on every rank alike.
    """

    def __init__(self, train_cfg, global_batch_size: int, seed: int, max_steps: int | None = None):
        self.cfg = train_cfg
        self.max_steps = max_steps
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.skipped_nonfinite = 0
        self.truncated_texts = 0
        self.tokens = {"real": 0, "padded": 0}  # of the last step

    def _loss(self, q, d, batch):
        b, k = len(batch.pos_keys), batch.num_negatives
        d = d.view(b, 1 + k, -1)  # [b, 1+k, d]: positive then negatives
        group = distributed.dp_group() if distributed.dp_size() > 1 else None
        teacher = None
        if batch.teacher_q is not None:
            td = batch.teacher_docs.to(q.device).view(b, 1 + k, -1)  # [b, 1+k, e]
            teacher = Teacher(batch.teacher_q.to(q.device), td[:, 0], td[:, 1:], self.cfg.distill.weight,
                              self.cfg.distill.temperature)
        return contrastive_loss(
            q, d[:, 0], d[:, 1:], temperature=self.cfg.loss.temperature, in_batch=batch.in_batch,
            pos_keys=batch.pos_keys, neg_keys=batch.neg_keys, global_batch_size=self.global_batch_size, group=group,
            any_in_batch=batch.any_in_batch, teacher=teacher,
        )

    def step(self, model, batch: ContrastiveBatch):
        c = self.cfg.chunking
        q_chunks, d_chunks = (chunking.plan_for(b, c) for b in (batch.queries, batch.docs))
        counts = [chunking.token_counts(batch.queries.lengths, q_chunks),
                  chunking.token_counts(batch.docs.lengths, d_chunks)]
        self.tokens = {"real": sum(r for r, _ in counts), "padded": sum(p for _, p in counts)}
        self.truncated_texts += batch.queries.num_truncated + batch.docs.num_truncated
        if c.grad_cache:  # the docs' last chunk keeps its graph (chunking.embed_cached)
            q, q_leaves = chunking.embed_cached(model, batch.queries, q_chunks, self.seed, batch.step, 0, keep_last=False)
            d, d_leaves = chunking.embed_cached(model, batch.docs, d_chunks, self.seed, batch.step, 1, keep_last=True)
        else:
            q = chunking.embed(model, batch.queries, q_chunks, self.seed, batch.step, 0)  # [b, d]
            d = chunking.embed(model, batch.docs, d_chunks, self.seed, batch.step, 1)  # [b*(1+k), d]
        out = self._loss(q, d, batch)
        if nonfinite_anywhere(out.global_loss):  # every rank (TP and DP) takes the same branch
            if self.cfg.nonfinite_loss == "error":
                raise FloatingPointError(
                    f"non-finite loss ({out.global_loss.item()}) at step {batch.step}; set "
                    f"train.nonfinite_loss=skip to skip such steps instead"
                )
            self.skipped_nonfinite += 1
            # max_steps None: a single step outside a stage (benchmarks, tests), no stage budget to check
            if self.max_steps is not None and self.skipped_nonfinite > self.cfg.max_skipped_fraction * self.max_steps:
                raise FloatingPointError(
                    f"{self.skipped_nonfinite} steps skipped for a non-finite loss (the last at step {batch.step}): "
                    f"more than train.max_skipped_fraction={self.cfg.max_skipped_fraction} of "
                    f"trainer.max_steps={self.max_steps}; the stage stops (lower the lr, check the data)")
            if distributed.is_global_rank_zero():
                print(f"[nonfinite] step {batch.step} skipped: loss {out.global_loss.item()} "
                      f"({self.skipped_nonfinite} skipped so far)", flush=True)
            return None, out  # no backward: gradients stay None and the optimizer leaves every weight as it is
        if not c.grad_cache:
            return out.loss, out
        out.loss.backward()  # gradients w.r.t. the cached embeddings (through the cross-rank gather) and the kept chunk's weights
        chunking.backward_chunks(model, batch.queries, q_chunks, q_leaves, self.seed, batch.step, 0)
        chunking.backward_chunks(model, batch.docs, d_chunks, d_leaves, self.seed, batch.step, 1)
        return out.loss.detach(), out


def nonfinite_anywhere(loss: torch.Tensor) -> bool:
    """True on every rank when the loss is non-finite on any rank (one MAX all-reduce)."""
    flag = (~torch.isfinite(loss.detach())).float().reshape(1)  # on the loss's device: no sync before the reduce
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())  # the step's one host sync for this decision
