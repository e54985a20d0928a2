"""The contrastive training step, its data stream and optimizer (paper section 3.3, Table 5).

Composed into :class:`NVEmbedModel` by :meth:`NVEmbedModel.setup_contrastive`; the model class
delegates ``training_step``/``configure_optimizers``/``train_dataloader`` here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

from nemo_nvembed.training import chunking
from nemo_nvembed.parallel import distributed
from nemo_nvembed.data.jsonl import Example
from nemo_nvembed.data.sampler import GlobalBatchSampler
from nemo_nvembed.data.tasks import TaskRegistry
from nemo_nvembed.training.loss import contrastive_loss


@dataclass
class ContrastiveBatch:
    step: int
    queries: object  # text.Batch [b, s]
    docs: object  # text.Batch [b*(1+k), s]: per query its positive then its k negatives
    in_batch: torch.Tensor  # [b] bool
    pos_keys: list[str]
    neg_keys: list[list[str]]
    num_negatives: int
    lines: list[int]  # source lines of the examples (traces, error messages)


class BatchStream:
    """This rank's batches from step ``start()`` on: the sampler is random-access by step, so a
    resumed run continues the exact sample order of an uninterrupted one."""

    def __init__(self, examples: list[Example], sampler: GlobalBatchSampler, registry: TaskRegistry,
                 text_encoder, data_cfg, in_batch_negatives: bool, start):
        self.examples, self.sampler, self.registry, self.text = examples, sampler, registry, text_encoder
        self.cfg, self.stage_in_batch, self.start = data_cfg, in_batch_negatives, start

    def __iter__(self):
        step = self.start()
        self.sampler.load_state_dict(self.sampler.state_dict_at(step))
        for local in self.sampler:
            yield self.collate(step, [self.examples[i] for i in local])
            step += 1

    def collate(self, step: int, exs: list[Example]) -> ContrastiveBatch:
        tasks = [self.registry[e.task] for e in exs]
        queries = self.text([e.query for e in exs], [t.train_instruction for t in tasks], self.cfg.query_max_length)
        docs = self.text([d for e in exs for d in (e.pos, *e.neg)], None, self.cfg.doc_max_length)
        in_batch = torch.tensor([self.stage_in_batch and t.in_batch_negatives for t in tasks])
        return ContrastiveBatch(step, queries, docs, in_batch, [e.pos_key for e in exs],
                                [list(e.neg_keys) for e in exs], len(exs[0].neg), [e.line for e in exs])


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
        return contrastive_loss(
            q, d[:, 0], d[:, 1:], temperature=self.cfg.loss.temperature, in_batch=batch.in_batch.to(q.device),
            pos_keys=batch.pos_keys, neg_keys=batch.neg_keys, global_batch_size=self.global_batch_size, group=group,
        )

    def step(self, model, batch: ContrastiveBatch):
        c = self.cfg.chunking
        q_chunks, d_chunks = (chunking.plan(b.attention_mask, c.chunk_size, c.length_aware, c.chunk_cost_tokens,
                                            c.max_chunk_tokens) for b in (batch.queries, batch.docs))
        counts = [chunking.token_counts(batch.queries.attention_mask, q_chunks),
                  chunking.token_counts(batch.docs.attention_mask, d_chunks)]
        self.tokens = {"real": sum(r for r, _ in counts), "padded": sum(p for _, p in counts)}
        self.truncated_texts += batch.queries.num_truncated + batch.docs.num_truncated
        if c.grad_cache:
            with torch.no_grad():
                q = chunking.embed(model, batch.queries, q_chunks, self.seed, batch.step, 0)
                d = chunking.embed(model, batch.docs, d_chunks, self.seed, batch.step, 1)
            q, d = q.detach().float().requires_grad_(), d.detach().float().requires_grad_()
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
        out.loss.backward()  # gradients w.r.t. the cached embeddings (through the cross-rank gather)
        chunking.backward_chunks(model, batch.queries, q_chunks, q.grad, self.seed, batch.step, 0)
        chunking.backward_chunks(model, batch.docs, d_chunks, d.grad, self.seed, batch.step, 1)
        return out.loss.detach(), out


def nonfinite_anywhere(loss: torch.Tensor) -> bool:
    """True on every rank when the loss is non-finite on any rank (one MAX all-reduce)."""
    flag = torch.tensor([0.0 if torch.isfinite(loss).item() else 1.0], device=loss.device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def build_optimizer(params, optim_cfg, max_steps: int):
    """AdamW (Adam with decoupled weight decay 0.03), linear warm-up then linear decay (Table 5)."""
    opt = torch.optim.AdamW(params, lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps,
                            weight_decay=optim_cfg.weight_decay)
    warm, floor = optim_cfg.warmup_steps, optim_cfg.min_lr / optim_cfg.lr

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        frac = (step - warm) / max(1, max_steps - warm)
        return max(floor, 1.0 - (1.0 - floor) * frac)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return opt, sched


class RetrievalValidation(Callback):
    """Scores a BEIR folder every ``every_n_steps`` optimizer steps and at the end; logs
    ``val_ndcg@10`` and ``val_recall@100``. All ranks encode (TP ranks must take part)."""

    def __init__(self, folder: str, instruction: str, every_n_steps: int, batch_size: int, precision: str):
        from nemo_nvembed.evaluate import load_beir

        self.data, self.instruction = load_beir(folder), instruction
        self.every, self.batch_size, self.precision = every_n_steps, batch_size, precision
        self.history: list[tuple[int, dict]] = []

    def _run(self, trainer, model):
        from nemo_nvembed.evaluate import score

        step = trainer.global_step
        if self.history and self.history[-1][0] == step:
            return
        metrics = score(model, self.data, self.instruction, self.batch_size, self.precision)
        self.history.append((step, metrics))
        for logger in trainer.loggers:
            logger.log_metrics({"val_ndcg@10": metrics["ndcg@10"], "val_recall@100": metrics["recall@100"]}, step)
        if trainer.is_global_zero:
            print(f"[validation] step {step}: nDCG@10 {metrics['ndcg@10']:.4f}  Recall@100 {metrics['recall@100']:.4f}",
                  flush=True)

    def on_train_batch_end(self, trainer, model, outputs, batch, batch_idx):
        if trainer.global_step % self.every == 0:
            self._run(trainer, model)

    def on_train_end(self, trainer, model):
        self._run(trainer, model)
