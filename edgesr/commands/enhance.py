"""``edgesr enhance``: run a shipped model, a checkpoint or an exported artifact on a user's image or raw
k-space.

The model runs through :mod:`edgesr.pipeline` as its spec says: the same path ``evaluate`` scores. An
artifact (``edgesr export``) is checked against its manifest, then its runtime session takes the torch
module's place behind the same prepare and finish.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from edgesr.config import check_choice, check_exactly_one, check_range, opt
from edgesr.data.images import load_image
from edgesr.data.kspace import load_kspace
from edgesr.data.writers import WRITABLE, check_output, check_slices, write_image
from edgesr.device import pick_device
from edgesr.errors import ConfigError
from edgesr.physics.coils import ESTIMATION_METHODS
from edgesr.physics.degrade import upsampled_affine
from edgesr.pipeline import (
    DEFAULT_TILE,
    Predictor,
    TorchPredictor,
    finish,
    fixed_crop,
    prepare_recon,
    prepare_sr,
    run,
)
from edgesr.spec import UNITS
from edgesr.teachers import list_shipped, teacher_path
from edgesr.train.checkpoint import load_for_inference

RECON_WRITABLE = (".nii", ".nii.gz", ".npy", ".tif", ".tiff")  # a magnitude volume: no 8/16-bit PNG


@dataclass(frozen=True)
class EnhanceConfig:
    input: str = opt("", "SR: a NIfTI, PNG, TIFF, NPY or DICOM series; recon: fastMRI or ISMRMRD HDF5")
    output: str = opt("", "where to write the result (SR: same format as the input; recon: .nii.gz)")
    model: str = opt("", "a shipped teacher (see `edgesr enhance --help`), or use checkpoint=")
    checkpoint: str = opt("", "a checkpoint folder written by `edgesr train` (its best/ or last/)")
    artifact: str = opt(
        "", "an artifact folder written by `edgesr export` (e.g. exports/NAME/cpu-openvino/fp32)"
    )
    units: str = opt(
        "auto",
        "SR: hu (CT numbers), raw (the model's own units or any magnitude scale) or auto: DICOM says; "
        "a CT model takes other formats as HU when they hold air below -200, else asks",
    )
    tile: int = opt(DEFAULT_TILE, "SR: LR tile size in pixels (0: whole image at once)")
    halo: int | None = opt(
        None, "SR: LR pixels of context around each tile (default: the model's receptive radius: exact)"
    )
    maps: str = opt(
        "", "recon: coil-map estimation from the ACS lines, lowres or espirit (default: the model's)"
    )
    device: str = opt("auto", "auto, cpu or cuda[:N]")

    def __post_init__(self) -> None:
        if not self.input or not self.output:
            raise ConfigError("input= and output= are required")
        check_exactly_one(
            {"model": self.model, "checkpoint": self.checkpoint, "artifact": self.artifact},
            hints={"model": f"shipped: {', '.join(list_shipped()) or 'none'}"},
        )
        check_choice("units", self.units, UNITS)
        check_range("tile", self.tile, low=0)
        if self.halo is not None:
            check_range("halo", self.halo, low=0)
        if self.maps:
            check_choice("maps", self.maps, ESTIMATION_METHODS)


def run_enhance(cfg: EnhanceConfig) -> int:
    console = Console(stderr=True)
    predictor: Predictor
    if cfg.artifact:
        from edgesr.export.artifact import open_artifact

        predictor, manifest = open_artifact(cfg.artifact)
        spec = manifest.spec
    else:
        folder = Path(cfg.checkpoint) if cfg.checkpoint else teacher_path(cfg.model)
        model, spec, _ = load_for_inference(folder)
        predictor = TorchPredictor(model.to(pick_device(cfg.device)), spec)
    # Where the result goes is checked before any work: never after minutes of inference.
    check_output(
        cfg.output, inputs=(cfg.input,), writable=WRITABLE if spec.sr is not None else RECON_WRITABLE
    )
    if spec.sr is not None:
        volume = load_image(cfg.input)
        check_slices(cfg.output, volume.data.shape[0])
        prepared = prepare_sr(
            spec, volume, units=cfg.units, tile=cfg.tile, halo=cfg.halo, crop=fixed_crop(predictor)
        )
        with console.status(f"super-resolving {volume.data.shape[0]} slice(s) x{spec.sr.scale}"):
            result = finish(spec, prepared, run(predictor, prepared))
        affine = None
        if volume.affine is not None:
            affine = upsampled_affine(
                volume.affine, spec.sr.scale, spec.sr.degradation, volume.data.shape[1:]
            )
        write_image(cfg.output, result, dtype=volume.dtype, affine=affine)
        units = f" ({prepared.intensity.units})" if spec.intensity.is_ct else ""
    else:
        raw = load_kspace(cfg.input)
        prepared_recon = prepare_recon(spec, raw, maps=cfg.maps or None)
        with console.status(
            f"reconstructing {raw.kspace.shape[0]} slice(s) from {raw.kspace.shape[1]} coils"
        ):
            result = finish(spec, prepared_recon, run(predictor, prepared_recon))
        write_image(cfg.output, result, dtype="float32")
        units = ""
    console.print(f"[green]wrote[/] {escape(cfg.output)} ({' x '.join(map(str, result.shape))}){units}")
    return 0
