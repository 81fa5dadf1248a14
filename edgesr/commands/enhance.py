"""``edgesr enhance``: run a shipped teacher or a checkpoint on a user's image or raw k-space."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from edgesr.config import check_choice, opt, parse_overrides
from edgesr.data.images import load_image
from edgesr.data.kspace import load_kspace
from edgesr.data.writers import write_image
from edgesr.device import pick_device
from edgesr.errors import ConfigError, DataError
from edgesr.inference import SRSettings, reconstruct_volume, super_resolve_volume, upsampled_affine
from edgesr.physics.coils import ESTIMATION_METHODS
from edgesr.teachers import list_teachers, teacher_path
from edgesr.train.checkpoint import load_model
from edgesr.train.config import DataSection


@dataclass(frozen=True)
class EnhanceConfig:
    input: str = opt("", "SR: a NIfTI, PNG, TIFF, NPY or DICOM series; recon: fastMRI or ISMRMRD HDF5")
    output: str = opt("", "where to write the result (SR: same format as the input; recon: .nii.gz)")
    model: str = opt("", "a shipped teacher (see `edgesr enhance --help`), or use checkpoint=")
    checkpoint: str = opt("", "a checkpoint folder written by `edgesr train` (its best/ or last/)")
    tile: int = opt(128, "SR: LR tile size in pixels (0: whole image at once)")
    halo: int = opt(32, "SR: LR pixels of context around each tile (exact when >= the receptive field)")
    maps: str = opt("lowres", "recon: coil-map estimation from the ACS lines, lowres or espirit")
    device: str = opt("auto", "auto, cpu or cuda[:N]")

    def __post_init__(self) -> None:
        if not self.input or not self.output:
            raise ConfigError("input= and output= are required")
        if bool(self.model) == bool(self.checkpoint):
            raise ConfigError(
                f"give exactly one of model= (shipped: {', '.join(list_teachers()) or 'none'}) or checkpoint="
            )
        check_choice("maps", self.maps, ESTIMATION_METHODS)


def run_enhance(cfg: EnhanceConfig) -> int:
    console = Console(stderr=True)
    folder = Path(cfg.checkpoint) if cfg.checkpoint else teacher_path(cfg.model)
    model, meta = load_model(folder)
    model = model.to(pick_device(cfg.device))
    task = getattr(model, "task", "sr")
    if task == "sr":
        scale = int(getattr(model, "scale", 1))
        data = parse_overrides(DataSection, base=meta["config"].get("data", {}))
        degradation = data.resolved_degradation
        volume = load_image(cfg.input)
        settings = SRSettings(degradation=degradation, tile=cfg.tile, halo=cfg.halo)
        with console.status(f"super-resolving {volume.data.shape[0]} slice(s) x{scale}"):
            result = super_resolve_volume(model, volume.data, settings)
        affine = None
        if volume.affine is not None:
            affine = upsampled_affine(volume.affine, scale, degradation, volume.data.shape[1:])
        write_image(cfg.output, result, dtype=volume.dtype, affine=affine)
    else:
        if not cfg.output.lower().endswith((".nii", ".nii.gz", ".npy", ".tif", ".tiff")):
            raise DataError(f"{cfg.output}: write recon results as .nii.gz (or .npy/.tif)")
        raw = load_kspace(cfg.input)
        with console.status(
            f"reconstructing {raw.kspace.shape[0]} slice(s) from {raw.kspace.shape[1]} coils"
        ):
            result = reconstruct_volume(model, raw, map_method=cfg.maps, coils=getattr(model, "coils", None))
        write_image(cfg.output, result, dtype="float32")
    console.print(f"[green]wrote[/] {cfg.output} ({' x '.join(map(str, result.shape))})")
    return 0
