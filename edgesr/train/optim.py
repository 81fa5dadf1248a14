"""The optimiser and learning-rate schedule of every edgesr training stage: AdamW, warm-up, cosine decay.

A stage (``edgesr train``, and later distillation, pruning fine-tuning and quantization-aware
training) builds them from its own :class:`~edgesr.train.config.OptimSection` and hands them to
:func:`edgesr.train.fit.fit`, which steps and checkpoints them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from edgesr.train.config import OptimSection


def warmup_cosine(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def adamw_warmup_cosine(
    parameters: Iterable[torch.nn.Parameter], optim: OptimSection
) -> tuple[torch.optim.AdamW, LambdaLR]:
    """AdamW at ``optim.lr`` and its schedule: ``optim.warmup`` steps up, cosine down over ``optim.steps``.

    The schedule is a pure function of the step, so a resumed run restores it from the step alone.
    """
    optimizer = torch.optim.AdamW(parameters, lr=optim.lr, weight_decay=optim.weight_decay)
    scheduler = LambdaLR(
        optimizer,
        lambda s: warmup_cosine(s, warmup=optim.warmup, total=optim.steps, min_ratio=optim.min_lr_ratio),
    )
    return optimizer, scheduler
