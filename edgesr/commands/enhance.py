"""``edgesr enhance``: run a shipped model, a checkpoint or an exported artifact on a user's image or raw
k-space.

The command is a thin shell over the Python API (:class:`edgesr.Enhancer`), which runs the model
through :mod:`edgesr.pipeline` as its spec says: the same path ``evaluate`` scores. An artifact
(``edgesr export``) is checked against its manifest, then its runtime session takes the torch module's
place behind the same prepare and finish. A DICOM input can be written back as a derived DICOM series
(:mod:`edgesr.integrate.dicom`) when the output is a folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from edgesr.config import check_choice, check_exactly_one, check_range, opt
from edgesr.data.images import is_dicom_path, load_image
from edgesr.data.kspace import load_kspace
from edgesr.data.writers import (
    WRITABLE,
    check_output,
    check_png_type,
    check_slices,
    check_volumes,
    clipping,
    write_image,
)
from edgesr.errors import ConfigError, DataError
from edgesr.integrate.api import Enhancer
from edgesr.integrate.dicom import check_derivable, check_output_folder, write_derived_series
from edgesr.physics.coils import ESTIMATION_METHODS
from edgesr.pipeline import DEFAULT_TILE, nearest_upsample
from edgesr.spec import UNITS
from edgesr.teachers import list_shipped

RECON_WRITABLE = (".nii", ".nii.gz", ".npy", ".tif", ".tiff")  # a magnitude volume: no 8/16-bit PNG


@dataclass(frozen=True)
class EnhanceConfig:
    input: str = opt("", "SR: a NIfTI, PNG, TIFF, NPY or DICOM series; recon: fastMRI or ISMRMRD HDF5")
    output: str = opt(
        "",
        "where to write the result: a file (.nii.gz, .tif, .npy, .png; recon: .nii.gz) or, for a DICOM "
        "input, a new or empty folder for a derived DICOM series",
    )
    series: str = opt("", "DICOM: the SeriesInstanceUID to read when the folder holds several series")
    series_number: int | None = opt(
        None, "DICOM output: the derived series' SeriesNumber (default: the source's + 1000)"
    )
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
    overwrite: bool = opt(
        False,
        "replace an output file that exists (default: refused, so that nothing already written is lost; "
        "a DICOM series always goes to a new or empty folder)",
    )
    precision: str = opt(
        "fp32",
        "model=/checkpoint=: fp32, or bf16 (torch autocast: convolutions in BF16, FFTs and data "
        "consistency in FP32; faster on CPUs with BF16 units and on GPUs); an artifact runs at its own",
    )

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
        if self.series_number is not None:
            check_range("series_number", self.series_number, low=0, high=2**31 - 1)
        check_choice("precision", self.precision, ("fp32", "bf16"))
        if self.artifact and self.precision != "fp32":
            raise ConfigError(
                f"precision={self.precision} is for model= and checkpoint=; an artifact runs at the "
                "precision it was exported and verified for"
            )


def _wants_dicom_series(output: str) -> bool:
    """A folder (no suffix, an existing folder, or a trailing slash) is where a derived series goes."""
    path = Path(output)
    return output.endswith(("/", "\\")) or path.is_dir() or path.suffix == ""


def run_enhance(cfg: EnhanceConfig) -> int:
    console = Console(stderr=True)
    enhancer = Enhancer.from_source(
        model=cfg.model,
        checkpoint=cfg.checkpoint,
        artifact=cfg.artifact,
        device=cfg.device,
        precision=cfg.precision,
    )
    spec = enhancer.spec
    # A missing input is the first thing to say: the output checks below would otherwise complain about a
    # folder output "needing a DICOM input" when the input does not exist at all.
    if not Path(cfg.input).exists():
        raise DataError(f"{cfg.input}: no such file or folder")
    # Where the result goes is checked before any work: never after minutes of inference.
    dicom_series = spec.sr is not None and _wants_dicom_series(cfg.output)
    if dicom_series:
        if not is_dicom_path(cfg.input):
            what = "is an existing folder" if Path(cfg.output).is_dir() else "names a folder"
            raise DataError(
                f"{cfg.output}: {what}; name a file to write (.nii.gz, .tif, .npy, .png): a folder output is "
                "a derived DICOM series, which needs a DICOM input (its patient, study and geometry)"
            )
        check_output_folder(cfg.output, inputs=(cfg.input,))
    else:
        if Path(cfg.output).suffix.lower() == ".dcm":
            raise DataError(
                f"{cfg.output}: DICOM is written as a derived series, one file per slice: name a new or "
                "empty folder (no suffix) as the output"
            )
        check_output(
            cfg.output, inputs=(cfg.input,), writable=WRITABLE if spec.sr is not None else RECON_WRITABLE
        )
        if Path(cfg.output).is_file() and not cfg.overwrite:
            raise DataError(f"{cfg.output}: exists; pass overwrite=true to replace it, or name another file")
    if spec.sr is not None:
        volume = load_image(cfg.input, series_uid=cfg.series or None)
        if dicom_series:
            check_derivable(volume)  # before minutes of inference, not after
        else:
            check_slices(cfg.output, volume.data.shape[0])
            check_volumes(cfg.output, volume.volumes)
            check_png_type(cfg.output, volume.dtype)
            gaps = volume.meta.get("uneven_slices")
            if gaps and cfg.output.lower().endswith((".nii", ".nii.gz")):
                raise DataError(
                    f"{cfg.input}: {gaps}; a NIfTI affine holds one step, so the slices would be misplaced: "
                    "write a derived DICOM series (name a folder) or .npy/.tif (no geometry)"
                )
        with Progress(
            TextColumn(
                f"super-resolving {_slices_in_words(volume.data.shape[0], volume.volumes)} x{spec.sr.scale}"
            ),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("tiles"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("tiles", total=None)
            result = enhancer.enhance(
                volume,
                units=cfg.units,
                tile=cfg.tile,
                halo=cfg.halo,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        for warning in result.warnings:  # soft_wrap: one line per warning, whole paths (greppable logs)
            console.print(f"[yellow]warning[/]: {escape(cfg.input)}: {escape(warning)}", soft_wrap=True)
        if dicom_series:
            padding = None
            if volume.padding is not None:
                padding = nearest_upsample(volume.padding, spec.sr.scale, spec.sr.degradation)
            write_derived_series(
                volume,
                result.image,
                cfg.output,
                scale=spec.sr.scale,
                degradation=spec.sr.degradation,
                provenance=result.provenance,
                padding=padding,
                series_number=cfg.series_number,
                warnings=result.warnings,
            )
        else:
            clipped = clipping(result.image, volume.dtype)
            if clipped:
                console.print(f"[yellow]warning[/]: {escape(cfg.output)}: {escape(clipped)}", soft_wrap=True)
            write_image(
                cfg.output,
                result.image,
                dtype=volume.dtype,
                affine=result.affine,
                volumes=volume.volumes,
                volume_step=float(volume.meta.get("volume_step", 1.0)),
                volume_step_unit=str(volume.meta.get("volume_step_unit", "unknown")),
            )
        units = f" ({result.units})" if spec.intensity.is_ct else ""
        what = " as a derived DICOM series" if dicom_series else ""
    else:
        raw = load_kspace(cfg.input)
        with console.status(
            f"reconstructing {raw.kspace.shape[0]} slice(s) from {raw.kspace.shape[1]} coils"
        ):
            result = enhancer.reconstruct(raw, maps=cfg.maps or None)
        for warning in result.warnings:
            console.print(f"[yellow]warning[/]: {escape(cfg.input)}: {escape(warning)}", soft_wrap=True)
        write_image(cfg.output, result.image, dtype="float32", affine=result.affine)
        units = " (prewhitened with the noise scans)" if result.meta.get("prewhitened") else ""
        what = ""
    volumes = int(result.meta.get("volumes", 1))
    dims = (
        result.image.shape
        if volumes == 1
        else (volumes, result.image.shape[0] // volumes, *result.image.shape[1:])
    )
    shape = " x ".join(map(str, dims))
    console.print(f"[green]wrote[/] {escape(cfg.output)} ({shape}){units}{what}")
    return 0


def _slices_in_words(slices: int, volumes: int) -> str:
    return f"{slices} slice(s)" if volumes == 1 else f"{volumes} volumes of {slices // volumes} slices"
