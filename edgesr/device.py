"""Which device a command runs on, and how a run describes the machine it trained on.

Training, evaluation and inference all choose their device here, so ``device=auto`` means the same
thing everywhere.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def pick_device(preference: str) -> torch.device:
    """``auto`` (CUDA when torch sees one, else the CPU), ``cpu`` or ``cuda[:N]``.

    Raises:
        ValueError: CUDA was asked for, but torch sees no CUDA device.
    """
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={preference} was asked for, but torch sees no CUDA device")
    return torch.device(preference)


def training_machine(device: torch.device, world_size: int) -> dict[str, Any]:
    """Where a run trains, for its checkpoints and model card: wall-clock times mean little without it."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU, {torch.get_num_threads()} torch threads"
    return {"device": name, "processes": world_size, "torch": torch.__version__}


def bf16_autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA (convolutions on the tensor cores); a no-op elsewhere or when not ``enabled``.

    The training objectives wrap only their networks' forward passes in it: the recon models' FFTs
    leave autocast on their own (:mod:`edgesr.physics.fft`) and the losses are computed in fp32.
    """
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
