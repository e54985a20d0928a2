"""Optimizer and learning-rate schedule of a training stage (paper Table 5)."""
from __future__ import annotations

import torch


def param_groups(network, optim_cfg) -> list:
    """Trainable parameters; with ``head_lr_mult`` != 1 the pooling head's are a second group at
    lr x head_lr_mult (one group otherwise, the layout older checkpoints' optimizer state has)."""
    trainable = [p for p in network.parameters() if p.requires_grad]
    if optim_cfg.head_lr_mult == 1.0:
        return trainable
    head = {id(p) for p in network.pooler.parameters()}
    return [{"params": [p for p in trainable if id(p) not in head]},
            {"params": [p for p in trainable if id(p) in head], "lr": optim_cfg.lr * optim_cfg.head_lr_mult}]


def build_optimizer(params, optim_cfg, max_steps: int):
    """AdamW (Adam with decoupled weight decay 0.03), linear warm-up then linear decay (Table 5);
    ``params``: tensors or groups (the schedule scales each group's own learning rate)."""
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
