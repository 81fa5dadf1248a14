"""Every export is checked against PyTorch on real inputs before it is declared done.

Two checks, chosen by the artifact's precision:

* **FP32 parity**: the runtime's output and the torch module's on the same network inputs (the
  pipeline's own tiles of real test slices), the largest absolute difference as a fraction of the
  torch output's data range. A runtime that computes a layer wrongly fails it by orders of magnitude
  (OpenVINO 2026.4 reading the ONNX DFT op without edgesr's rewrite: relative error ~10).
* **Quality** for BF16, FP16 and INT8, which differ from FP32 by design: PSNR/SSIM through the full
  pipeline on the test split's reference images, against torch FP32's on the same images, within the
  target's (or the recipe's) gate; the PSNR of the artifact's output against torch's is recorded too.

A failure raises :class:`VerificationError` naming the artifact, the output and the figures; a failed
parity check of an ONNX Runtime or OpenVINO file also names the first layer that differs
(:mod:`edgesr.export.locate`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from edgesr.data.dataset import PreparedDataset
from edgesr.errors import EdgesrError
from edgesr.evaluate import score_predictor
from edgesr.pipeline import Predictor
from edgesr.spec import ModelSpec


class VerificationError(EdgesrError):
    """An export whose outputs do not match PyTorch within the target's tolerance."""


def compare_outputs(
    reference: Predictor,
    candidate: Predictor,
    inputs: Sequence[dict[str, np.ndarray]],
    *,
    expected: Sequence[torch.Tensor] | None = None,
) -> dict[str, float | int | list[int]]:
    """The candidate's outputs against the reference's on each of ``inputs``.

    ``expected`` are the reference's outputs on ``inputs`` when already computed (an export records
    them while it records the inputs); the reference is then not run again.

    Returns:
        ``max_abs_error``; ``data_range`` (max - min of all reference outputs); ``relative_error``
        (their ratio); ``psnr_db`` of the candidate against the reference over all items (inf when
        equal); ``worst_item`` (the index of the item with the largest error); ``items``.

    Raises:
        VerificationError: an output's shape differs, or holds NaN or Inf.
    """
    if not inputs:
        raise ValueError("compare_outputs needs at least one input")
    worst, worst_item, squared, count = 0.0, 0, 0.0, 0
    worst_at: list[int] = []
    low, high = math.inf, -math.inf
    for index, item in enumerate(inputs):
        feeds = {name: torch.from_numpy(array) for name, array in item.items()}
        wanted = reference(feeds) if expected is None else expected[index]
        actual = candidate(feeds)
        if tuple(actual.shape) != tuple(wanted.shape):
            raise VerificationError(
                f"output shape {tuple(actual.shape)} differs from PyTorch's {tuple(wanted.shape)} "
                f"on input {index} ({_shapes(item)})"
            )
        if not torch.isfinite(actual).all():
            raise VerificationError(f"the output holds NaN or Inf on input {index} ({_shapes(item)})")
        difference = (actual - wanted).abs()
        if float(difference.max()) > worst:
            worst, worst_item = float(difference.max()), index
            # Where: an error at the borders points at padding, one everywhere at a layer or an op.
            worst_at = [int(i) for i in torch.unravel_index(difference.argmax(), difference.shape)]
        squared += float((difference.double() ** 2).sum())
        count += difference.numel()
        low, high = min(low, float(wanted.min())), max(high, float(wanted.max()))
    data_range = max(high - low, 1e-12)
    mse = squared / count
    return {
        "max_abs_error": worst,
        "data_range": data_range,
        "relative_error": worst / data_range,
        "psnr_db": math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse),
        "worst_item": worst_item,
        "worst_at": worst_at,  # [batch, channel, row, column] of the largest error
        "items": len(inputs),
    }


def _where(figures: dict[str, Any]) -> str:
    at = figures.get("worst_at") or []
    if len(at) != 4:
        return ""
    return f" (largest at channel {at[1]}, row {at[2]}, column {at[3]} of the output)"


def check_parity(figures: dict[str, Any], *, limit: float, label: str) -> None:
    """Raises :class:`VerificationError` when ``figures["relative_error"]`` exceeds ``limit``."""
    if figures["relative_error"] > limit:
        raise VerificationError(
            f"{label}: output differs from PyTorch by {figures['max_abs_error']:.3g} "
            f"({figures['relative_error']:.3g} of the data range {figures['data_range']:.3g}) on input "
            f"{figures['worst_item']} of {figures['items']}{_where(figures)}; the limit is {limit:g} of the "
            "range. The runtime computes some layer differently from PyTorch; nothing was kept"
        )


def quality(
    spec: ModelSpec,
    reference: Predictor,
    candidate: Predictor,
    dataset: PreparedDataset,
    *,
    slices_per_volume: int,
    split: str = "test",
    reference_scores: dict[str, Any] | None = None,
    kspace_shape: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """PSNR/SSIM of torch FP32 and of the artifact through the pipeline, on the same reference images.

    ``reference_scores`` is the reference's ``score_predictor`` result on the same slices when known
    (an export with several precisions scores PyTorch once). ``kspace_shape``: recon slices of that
    size only (a fixed-shape artifact).
    """
    torch_scores = reference_scores or score_predictor(
        spec, reference, dataset, split=split, max_slices=slices_per_volume, kspace_shape=kspace_shape
    )
    scores = score_predictor(
        spec, candidate, dataset, split=split, max_slices=slices_per_volume, kspace_shape=kspace_shape
    )
    return {
        "split": split,
        "slices": scores["slices"],
        "psnr": scores["psnr"],
        "ssim": scores["ssim"],
        "torch_fp32_psnr": torch_scores["psnr"],
        "torch_fp32_ssim": torch_scores["ssim"],
        "psnr_drop_db": round(torch_scores["psnr"] - scores["psnr"], 4),
        "ssim_drop": round(torch_scores["ssim"] - scores["ssim"], 5),
    }


def check_quality(
    figures: dict[str, Any], *, max_psnr_drop_db: float, max_ssim_drop: float, label: str
) -> None:
    """Raises :class:`VerificationError` when the artifact loses more than the gate allows."""
    if figures["psnr_drop_db"] > max_psnr_drop_db or figures["ssim_drop"] > max_ssim_drop:
        raise VerificationError(
            f"{label}: PSNR {figures['psnr']:.2f} dB, SSIM {figures['ssim']:.4f} on {figures['slices']} "
            f"{figures['split']} slices against PyTorch FP32's {figures['torch_fp32_psnr']:.2f} dB, "
            f"{figures['torch_fp32_ssim']:.4f}: it loses {figures['psnr_drop_db']:.3f} dB and "
            f"{figures['ssim_drop']:.4f} SSIM, more than the gate ({max_psnr_drop_db} dB, {max_ssim_drop}); "
            "nothing was kept"
        )


def _shapes(item: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{name} {list(array.shape)}" for name, array in item.items())


__all__ = ["VerificationError", "check_parity", "check_quality", "compare_outputs", "quality"]
