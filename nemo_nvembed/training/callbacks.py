"""Callbacks of a training stage besides preemption (:mod:`nemo_nvembed.training.preemption`):
retrieval validation during training."""
from __future__ import annotations

from lightning.pytorch.callbacks import Callback

from nemo_nvembed.data.beir_folder import load_beir
from nemo_nvembed.eval.retrieval_metrics import score
from nemo_nvembed.eval.sharded_encode import DPShardedEncoder


class RetrievalValidation(Callback):
    """Scores a BEIR folder every ``every_n_steps`` optimizer steps and at the end; logs
    ``val_ndcg@10`` and ``val_recall@100``. All ranks encode (TP ranks must take part)."""

    def __init__(self, folder: str, instruction: str, every_n_steps: int, batch_size: int, precision: str):
        self.data, self.instruction = load_beir(folder), instruction
        self.every, self.batch_size, self.precision = every_n_steps, batch_size, precision
        self.history: list[tuple[int, dict]] = []

    def _run(self, trainer, model):
        step = trainer.global_step
        if self.history and self.history[-1][0] == step:
            return
        # Each data-parallel rank encodes a share (all TP ranks of a DP rank encode the same share).
        metrics = score(DPShardedEncoder.for_current_run(model.network), self.data, self.instruction, self.batch_size,
                        self.precision)
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
