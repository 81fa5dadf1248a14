"""``torch`` artifacts (``gpu-torch``, ``cpu-torch``): the checkpoint's safetensors weights and JSON, run by
PyTorch at FP32 or under autocast at BF16/FP16.

For machines with an NVIDIA GPU but no TensorRT (a console PC with a CUDA build of PyTorch, this project's
H100/H200 check machine) the fastest verified path is PyTorch itself under autocast; on a CPU, for MoDL,
whose CG solve the other runtimes run slower than torch, it is torch too (BF16 where the CPU has BF16
units). The artifact is the checkpoint's two files (``model.safetensors``, ``checkpoint.json``: no
pickle) copied with a manifest, so it is opened, hash-checked and run like every other artifact.
Autocast keeps reductions, the FFTs and data consistency in FP32
(:func:`edgesr.physics.fft.full_precision`); convolutions run in the artifact's precision
(:class:`edgesr.pipeline.TorchPredictor` does it).

The export verifies the artifact on the target's ``device``: ``auto`` is CUDA where there is a GPU, else
the CPU (autocast supports BF16 and FP16 there too, slowly without BF16 units); the manifest records
which (``verification.device``).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import torch

from edgesr.pipeline import AUTOCAST_DTYPES, TorchPredictor
from edgesr.train.checkpoint import META_FILE, MODEL_FILE, load_for_inference, resolve_checkpoint


def copy_checkpoint(source: str | Path, folder: Path) -> None:
    """The checkpoint's weights and JSON (nothing else: no optimizer state) into ``folder``."""
    resolved = resolve_checkpoint(source)
    folder.mkdir(parents=True, exist_ok=True)
    for name in (MODEL_FILE, META_FILE):
        shutil.copyfile(resolved / name, folder / name)


class TorchArtifactPredictor:
    """A ``torch`` artifact on a device, at its precision, behind the predictor contract.

    Args:
        folder: the artifact's folder (its manifest was checked by the caller).
        precision: ``fp32``, ``bf16`` or ``fp16``: the autocast dtype of its convolutions.
        device: ``cuda``, ``cpu``...; default CUDA when there is a GPU.
        threads: CPU threads (0: torch's default), for CPU runs.
        compile_mode: run under ``torch.compile`` in this mode (``""``: eager); the manifest's
            ``graph.torch_compile``, what the export was verified with.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        precision: str,
        device: str | None = None,
        threads: int = 0,
        compile_mode: str = "",
    ) -> None:
        if precision not in AUTOCAST_DTYPES:
            raise ValueError(f"precision must be one of {', '.join(AUTOCAST_DTYPES)}; got {precision!r}")
        if threads > 0:
            torch.set_num_threads(threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, spec, _ = load_for_inference(folder)
        self._inner = TorchPredictor(
            model.to(self.device), spec, device=self.device, precision=precision, compile_mode=compile_mode
        )
        self.compile_mode = compile_mode
        self.input_names = spec.input_names
        self.executed_precision = self._inner.executed_precision

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self._inner(inputs)


__all__ = ["AUTOCAST_DTYPES", "TorchArtifactPredictor", "copy_checkpoint"]
