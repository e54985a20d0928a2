"""Lightning strategy for TP x DP training with megatron-core parallel state.

- ``setup_distributed`` creates the process group and megatron's TP/DP groups.
- No DDP wrapper: after the last backward of a step, gradients of trainable parameters are
  summed over the *data-parallel group only* (TP ranks hold different shards). The loss of
  :mod:`nemo_nvembed.training.loss` is normalised by the global batch size, so the SUM gives exactly the
  gradient of the full-batch mean loss (Tevatron issue 143's pitfall).
- Gradient clipping (``trainer.gradient_clip_val``) is by the true global norm over TP x DP
  (:mod:`grad_clip`), after the DP SUM, so every rank applies the same scale; the model's
  ``configure_gradient_clipping`` hook delegates here instead of Lightning's per-rank clipping.
- The replica guard (:mod:`replica_guard`) compares replicated parameters across the TP and DP
  groups at every checkpoint save and at the end of training.
- Checkpoints are TP-independent: trainable parameters and their Adam moments are stored in the
  full (TP=1) layout (:mod:`tp_layout`); the frozen backbone is not repeated in every checkpoint
  (it comes from ``init_from``).
- Checkpoint files are written by the ``checkpoint_io`` the stage passes in
  (:class:`~nemo_nvembed.training.checkpoint_io.ManifestCheckpointIO`: atomic, with a manifest).
"""
from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy

from nemo_nvembed.models.network import rename_legacy
from nemo_nvembed.parallel import distributed, tp_layout
from nemo_nvembed.parallel.grad_sum import sum_gradients
from nemo_nvembed.training import grad_clip, replica_guard


def clip_gradients_globally(params, max_norm: float) -> torch.Tensor:
    """Clip the (DP-reduced) gradients of ``params`` to global norm ``max_norm`` over the TP group."""
    return grad_clip.clip_grad_norm(params, max_norm, distributed.tp_group(), distributed.tp_rank())


class MegatronDPStrategy(DDPStrategy):
    strategy_name = "nvembed_megatron_dp"

    def __init__(self, tensor_model_parallel_size: int, seed: int, **kwargs):
        super().__init__(**kwargs)
        self.tp = tensor_model_parallel_size
        self.seed = seed

    # ---------------------------------------------------------------- process groups
    def setup_distributed(self) -> None:
        super().setup_distributed()
        distributed.initialize(self.tp, seed=self.seed)

    def configure_ddp(self) -> None:
        pass  # gradients are reduced over the DP group in optimizer_step, not by a DDP wrapper

    # ---------------------------------------------------------------- gradients
    def optimizer_step(self, optimizer, closure, model=None, **kwargs):
        def closure_then_reduce():
            loss = closure()
            self.reduce_gradients()
            return loss

        return super().optimizer_step(optimizer, closure_then_reduce, model, **kwargs)

    def reduce_gradients(self) -> None:
        if distributed.dp_size() > 1:
            sum_gradients(self._network.parameters(), distributed.dp_group())

    def clip_gradients(self, max_norm: float | None, algorithm: str | None) -> torch.Tensor | None:
        """``trainer.gradient_clip_val`` / ``gradient_clip_algorithm``, rank-consistent (called by the
        model's ``configure_gradient_clipping`` hook, after :meth:`reduce_gradients`). Returns the
        global gradient norm before clipping (None when clipping is off)."""
        if not max_norm:
            return None
        params = [p for p in self._network.parameters() if p.requires_grad]
        if algorithm not in (None, "norm"):
            if algorithm != "value":
                raise ValueError(f"trainer.gradient_clip_algorithm={algorithm!r}: use norm or value")
            torch.nn.utils.clip_grad_value_(params, max_norm)  # element-wise: the same on every replica
            return None
        return clip_gradients_globally(params, max_norm)

    # ---------------------------------------------------------------- replica guard
    def check_replicas(self, where: str = "") -> None:
        replica_guard.check_replicas(self._network.named_parameters(), self.lightning_module.trainer.global_step,
                                     distributed.tp_group(), distributed.dp_group(), where)

    def on_train_end(self) -> None:
        super().on_train_end()
        self.check_replicas(" (end of training)")

    # ---------------------------------------------------------------- TP-independent checkpoints
    @property
    def _network(self):
        return self.lightning_module.network  # parameter names as in the .nemo (no "network." prefix)

    def _trainable(self):
        return [(n, p) for n, p in self._network.named_parameters() if p.requires_grad]

    def lightning_module_state_dict(self) -> dict[str, Any]:
        self.check_replicas(" (checkpoint save)")  # collective, like the gathers below
        return {tp_layout.canonical(n): tp_layout.gather_tensor(n, p).cpu() for n, p in self._trainable()}

    def load_model_state_dict(self, checkpoint, strict: bool = True) -> None:
        network = self._network
        full = network.full_state_dict()
        full.update(rename_legacy(checkpoint["state_dict"]))
        network.load_full_state_dict(full, source="the training checkpoint")

    def optimizer_state(self, optimizer) -> dict[str, Any]:
        """Optimizer state with every per-parameter tensor gathered to the full layout."""
        named = {id(p): (n, p) for n, p in self._trainable()}
        state = optimizer.state_dict()
        order = [p for group in optimizer.param_groups for p in group["params"]]
        out = {}
        for idx, s in state["state"].items():
            name, p = named[id(order[idx])]
            out[idx] = {k: (tp_layout.gather_tensor(name, p, v).cpu() if torch.is_tensor(v) and v.shape == p.shape else v)
                        for k, v in s.items()}
        return {"state": out, "param_groups": state["param_groups"]}

    def load_optimizer_state_dict(self, checkpoint) -> None:
        named = {id(p): (n, p) for n, p in self._trainable()}
        from megatron.core import parallel_state as ps

        rank, size = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
        for optimizer, saved in zip(self.optimizers, checkpoint["optimizer_states"]):
            order = [p for group in optimizer.param_groups for p in group["params"]]
            state = {}
            for idx, s in saved["state"].items():
                name, p = named[id(order[int(idx)])]
                dim, chunks = tp_layout.layout(name, p)
                state[idx] = {
                    k: (tp_layout.shard(v, dim, chunks, rank, size).to(p.device) if torch.is_tensor(v) and v.dim() == p.dim() and v.numel() >= p.numel() else v)
                    for k, v in s.items()
                }
            optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
