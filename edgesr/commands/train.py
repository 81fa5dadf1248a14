"""``edgesr train``: train a model on the prepared data set (see :mod:`edgesr.train.teacher`)."""

from __future__ import annotations

import shlex
import sys

from rich.console import Console
from rich.markup import escape

from edgesr.train.config import TrainConfig
from edgesr.train.teacher import train


def run_train(cfg: TrainConfig) -> int:
    command = "edgesr " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = train(cfg, command=command)
    Console(stderr=True).print(
        f"[green]done[/]: step {result['step']}, best val PSNR {result['best_val_psnr']:.2f} dB; "
        f"checkpoints in {escape(cfg.out)}/best and {escape(cfg.out)}/last"
    )
    return 0
