"""The report's image grid: input, teacher, student and reference on a few test slices, with the
absolute error maps of teacher and student on one shared colour scale.

One row per source volume (its first test slice as the protocol picks it), so a template and a real
scan are both shown. SR: the input is the low-resolution slice shown at the output size (nearest
neighbour, so its pixels stay visible); recon: the zero-filled adjoint of the undersampled k-space.
Images share the reference's grey range per row; error maps share one range across the whole grid
(the 99.5th percentile of all errors), so a darker map is a smaller error everywhere on the page.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgesr.data.dataset import PreparedDataset
from edgesr.evaluate import (
    model_recon_method,
    model_sr_method,
    recon_baseline_methods,
    recon_samples,
    sr_pairs,
)
from edgesr.physics.fft import complex_abs
from edgesr.pipeline import Predictor, TorchPredictor
from edgesr.spec import ModelSpec
from edgesr.teachers import teacher_path
from edgesr.train.checkpoint import load_for_inference


def _torch_model(folder: Path, precision: str = "fp32") -> tuple[Predictor, ModelSpec]:
    model, spec, _ = load_for_inference(folder)
    return TorchPredictor(model, spec, device="cpu", precision=precision), spec


def _teacher_folder(name_or_path: str) -> Path | None:
    if not name_or_path:
        return None
    path = Path(name_or_path)
    return path if path.is_dir() else teacher_path(name_or_path)


def models_of(kind: str, folder: Path, data: dict[str, Any]) -> dict[str, Any] | None:
    """The teacher and the student of a compress report or bench result, as predictors; None when the
    result does not say where its models are, or they are no longer there (no grid is drawn)."""
    if kind == "compress":
        if "final_model" not in data:
            return None
        recorded = Path(data["final_model"])
        student_folder = folder / recorded.parent.name / recorded.name
        if not student_folder.is_dir():  # the run's models were not kept beside its report
            return None
        student, spec = _torch_model(student_folder)
        teacher_folder = _teacher_folder(str(data.get("recipe", {}).get("teacher", "")))
        label = recorded.parent.name
    else:
        subject = data.get("subject", {})
        if not subject.get("folder") or not Path(subject["folder"]).is_dir():
            return None
        subject_folder = Path(subject["folder"])
        precision = "fp32"
        if subject.get("artifact"):
            from edgesr.export.artifact import open_artifact

            student, manifest = open_artifact(subject_folder)
            spec = manifest.spec
        else:
            # The subject's own run is the last (after the teacher's): its precision, BF16 autocast too.
            precision = str((data.get("runs") or [{}])[-1].get("precision", "fp32"))
            student, spec = _torch_model(subject_folder, precision)
        teacher_folder = _teacher_folder(str(subject.get("teacher", "")))
        label = str(subject.get("name", "student"))
        if precision != "fp32":
            label += f" (torch {precision})"
        if subject.get("artifact"):  # which file ran: the runtime and precision, not only the model
            label += f" ({manifest.runtime} {manifest.precision})"
    teacher = _torch_model(teacher_folder)[0] if teacher_folder is not None else None
    return {"spec": spec, "teacher": teacher, "student": student, "label": label}


Row = tuple[str, list[np.ndarray | None]]  # slice id, [input, teacher or None, student, reference]


def _magnitudes(slice_id: str, images: list[torch.Tensor | None]) -> Row:
    return slice_id, [None if x is None else np.asarray(x, dtype=np.float32).squeeze() for x in images]


def _magnitude(image: torch.Tensor) -> torch.Tensor:
    """A recon method's output as a magnitude image (baselines give channel pairs, models magnitudes)."""
    return complex_abs(image) if image.shape[1] == 2 else image


def _rows(models: dict[str, Any], dataset: PreparedDataset) -> list[Row]:
    """Per volume: its first test slice as input, teacher (or None), student and reference images."""
    spec: ModelSpec = models["spec"]
    nets = {k: models[k] for k in ("teacher", "student") if models[k] is not None}
    rows = []
    if spec.sr is not None:
        scale, kind = spec.sr.scale, spec.sr.degradation
        sr_methods = {k: model_sr_method(spec, p) for k, p in nets.items()}
        pairs = sr_pairs(
            dataset, modality=spec.intensity.modality, scale=scale, degradation=kind, max_slices=1
        )
        for lr, hr, slice_id in pairs:
            with torch.no_grad():
                sr = {k: method(lr, scale, kind) for k, method in sr_methods.items()}
            shown = F.interpolate(lr, size=hr.shape[-2:], mode="nearest")
            rows.append(_magnitudes(slice_id, [shown, sr.get("teacher"), sr["student"], hr]))
        return rows
    coils = spec.recon.coils if spec.recon is not None and spec.recon.coils else 8
    recon_methods = {k: model_recon_method(spec, p) for k, p in nets.items()}
    zero_filled = recon_baseline_methods()["zero-filled"]
    for sample, slice_id in recon_samples(dataset, acceleration=4.0, n_coils=coils, max_slices=1):
        kspace, mask, maps = sample.kspace[None], sample.mask.view(1, 1, 1, -1), sample.sens_maps[None]
        with torch.no_grad():
            recon = {k: _magnitude(method(kspace, mask, maps)) for k, method in recon_methods.items()}
            shown = _magnitude(zero_filled(kspace, mask, maps))
        reference = complex_abs(sample.target[None])
        rows.append(_magnitudes(slice_id, [shown, recon.get("teacher"), recon["student"], reference]))
    return rows


def image_grid(models: dict[str, Any], dataset: PreparedDataset) -> bytes:
    """The grid as PNG bytes (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _rows(models, dataset)
    errors = [np.abs(img - row[3]) for _, row in rows for img in (row[1], row[2]) if img is not None]
    error_max = float(np.percentile(np.concatenate([e.ravel() for e in errors]), 99.5)) or 1e-6
    titles = [
        "input",
        "teacher",
        models["label"],
        "reference",
        "|teacher - ref|",
        f"|{models['label']} - ref|",
    ]
    figure, axes = plt.subplots(len(rows), 6, figsize=(15, 2.7 * len(rows)), squeeze=False)
    try:
        for r, (slice_id, (shown, teacher, student, reference)) in enumerate(rows):
            assert reference is not None and student is not None  # noqa: S101 (always computed above)
            grey = float(reference.max()) or 1.0
            teacher_error = None if teacher is None else np.abs(teacher - reference)
            panels = [shown, teacher, student, reference, teacher_error, np.abs(student - reference)]
            for c, (ax, image) in enumerate(zip(axes[r], panels, strict=True)):
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(titles[c], fontsize=9)
                if image is None:
                    ax.text(0.5, 0.5, "teacher not known", ha="center", va="center", fontsize=8)
                    continue
                if c < 4:
                    ax.imshow(image, cmap="gray", vmin=0.0, vmax=grey)
                else:
                    shown_error = ax.imshow(image, cmap="inferno", vmin=0.0, vmax=error_max)
            axes[r][0].set_ylabel(slice_id, fontsize=8)
        figure.colorbar(shown_error, ax=axes[:, 4:].ravel().tolist(), shrink=0.8, label="absolute error")
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        return buffer.getvalue()
    finally:
        plt.close(figure)


__all__ = ["image_grid", "models_of"]
