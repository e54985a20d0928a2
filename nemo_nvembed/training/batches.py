"""One training step's batch and the stream of them: sampled examples -> tokenised queries and documents."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from nemo_nvembed.data.jsonl import Example
from nemo_nvembed.data.sampler import GlobalBatchSampler
from nemo_nvembed.data.tasks import TaskRegistry
from nemo_nvembed.data.teacher import TeacherTable


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
    any_in_batch: bool | None = None  # any query of the GLOBAL batch with in-batch negatives (None: unknown)
    teacher_q: torch.Tensor | None = None  # [b, e] the teacher's vectors of the queries (train.distill)
    teacher_docs: torch.Tensor | None = None  # [b*(1+k), e] and of the documents, in docs' order


class BatchStream:
    """This rank's batches from step ``start()`` on: the sampler is random-access by step, so a
    resumed run continues the exact sample order of an uninterrupted one."""

    def __init__(self, examples: list[Example], sampler: GlobalBatchSampler, registry: TaskRegistry,
                 text_encoder, data_cfg, in_batch_negatives: bool, start, teacher: TeacherTable | None = None):
        self.examples, self.sampler, self.registry, self.text = examples, sampler, registry, text_encoder
        self.cfg, self.stage_in_batch, self.start, self.teacher = data_cfg, in_batch_negatives, start, teacher

    def __iter__(self):
        step = self.start()
        self.sampler.load_state_dict(self.sampler.state_dict_at(step))
        while True:
            global_batch = self.sampler.next_global_batch()
            any_in_batch = self.stage_in_batch and any(
                self.registry[self.examples[i].task].in_batch_negatives for i in global_batch)
            yield self.collate(step, [self.examples[i] for i in self.sampler.local_of(global_batch)], any_in_batch)
            step += 1

    def collate(self, step: int, exs: list[Example], any_in_batch: bool | None = None) -> ContrastiveBatch:
        """This rank's batch; ``any_in_batch``: whether any query of the global batch uses in-batch
        negatives (the loss then needs no collective to agree on it)."""
        tasks = [self.registry[e.task] for e in exs]
        queries = self.text([e.query for e in exs], [t.train_instruction for t in tasks], self.cfg.query_max_length)
        docs = self.text([d for e in exs for d in (e.pos, *e.neg)], None, self.cfg.doc_max_length)
        in_batch = torch.tensor([self.stage_in_batch and t.in_batch_negatives for t in tasks])
        if any_in_batch is None and self.sampler is None:  # no sampler: these examples are the whole batch
            any_in_batch = self.stage_in_batch and any(t.in_batch_negatives for t in tasks)
        teacher = {}
        if self.teacher is not None:
            teacher = {"teacher_q": self.teacher.lookup([e.query for e in exs]),
                       "teacher_docs": self.teacher.lookup([d for e in exs for d in (e.pos, *e.neg)])}
        return ContrastiveBatch(step, queries, docs, in_batch, [e.pos_key for e in exs],
                                [list(e.neg_keys) for e in exs], len(exs[0].neg), [e.line for e in exs], any_in_batch,
                                **teacher)
