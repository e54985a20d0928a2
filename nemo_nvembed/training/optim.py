"""Optimizer and learning-rate schedule of a training stage (paper Table 5)."""
from __future__ import annotations

import torch


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
