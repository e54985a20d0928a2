"""Optimizer and learning-rate schedule of a training stage (paper Table 5)."""
from __future__ import annotations

import torch


def param_groups(network, optim_cfg) -> list:
    """Trainable parameters; with ``head_lr_mult`` or ``lora_b_lr_mult`` != 1, groups at lr x mult: the
    rest, then the pooling head's, then LoRA's ``lora_B`` (LoRA+, Hayou et al. 2024: B learns faster than
    A). One plain list when both are 1 (the layout older checkpoints' optimizer state has)."""
    trainable = [p for p in network.parameters() if p.requires_grad]
    head_mult, b_mult = optim_cfg.head_lr_mult, optim_cfg.get("lora_b_lr_mult", 1.0)
    if head_mult == 1.0 and b_mult == 1.0:
        return trainable
    head = {id(p) for p in network.pooler.parameters()}
    lora_b = {id(p) for name, p in network.named_parameters() if name.endswith("lora_B")} if b_mult != 1.0 else set()
    groups = [{"params": [p for p in trainable if id(p) not in head and id(p) not in lora_b]},
              {"params": [p for p in trainable if id(p) in head], "lr": optim_cfg.lr * head_mult}]
    if lora_b:
        groups.append({"params": [p for p in trainable if id(p) in lora_b], "lr": optim_cfg.lr * b_mult})
    return groups


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
