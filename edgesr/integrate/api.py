"""The integrators' entry point: a model ready to run on arrays, from console software or a server.

An :class:`Enhancer` wraps one model (a shipped teacher or student, a checkpoint, or an exported
artifact whose files are checked against its manifest) behind the model contract of
:mod:`edgesr.pipeline`, so it gives exactly what ``edgesr enhance`` gives for the same input::

    import numpy as np
    import edgesr

    enhancer = edgesr.Enhancer.from_shipped("rdn-ct-x2")            # or .from_artifact("exports/...")
    hu = np.load("slice_hu.npy")                                     # [H, W] or [S, H, W], in HU
    result = enhancer.enhance(hu, spacing=(0.9, 0.9), units="hu")
    result.image.shape, result.spacing                               # (1, 2H, 2W), (1.0, 0.45, 0.45)
    result.provenance.weights_sha256                                 # what made it, for the audit trail
    result.warnings                                                  # () or what to know, in words

    recon = edgesr.Enhancer.from_shipped("modl-r4")
    image = recon.reconstruct(kspace, mask=mask).image              # [C, H, W] complex -> [1, H, W]

Threads: one ``Enhancer`` may be called from several threads. Preparation (intensity mapping, coil
maps) and stitching run in the calling thread; the model itself runs under the enhancer's lock, one
call at a time, because runtime sessions (an OpenVINO infer request, a TensorRT context) are not safe
to share and torch would oversubscribe the cores. For parallel throughput on a machine with many
cores, give each thread its own ``Enhancer``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgesr import __version__
from edgesr.data.images import ImageVolume, load_image, volume_from_array
from edgesr.data.kspace import KSpaceVolume, kspace_from_arrays
from edgesr.data.mrd import center_crop
from edgesr.device import pick_device
from edgesr.errors import ConfigError, DataError
from edgesr.physics.degrade import upsampled_affine
from edgesr.physics.spectrum import interpolation_warning
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
from edgesr.spec import ModelSpec


@dataclass(frozen=True)
class Provenance:
    """What made a result: enough to name the exact model in a DICOM header or an audit log.

    Attributes:
        model: the shipped name, checkpoint folder or artifact folder it was opened from.
        architecture: the registered architecture (``rdn_small``, ``modl``...).
        weights_sha256: sha256 of the weights (the checkpoint's ``model.safetensors``; for an artifact,
            the checkpoint it was exported from).
        runtime: ``torch``, ``onnxruntime``, ``openvino`` or ``tensorrt``.
        precision: for torch ``fp32``, or ``bf16+fp32`` (BF16 autocast); the artifact's precision
            (``int8``...) otherwise.
        artifact_sha256: for an artifact, the sha256 of the file the runtime runs; else empty.
        edgesr_version: the edgesr that ran it.
    """

    model: str
    architecture: str
    weights_sha256: str
    runtime: str
    precision: str
    artifact_sha256: str = ""
    edgesr_version: str = __version__

    def describe(self) -> str:
        """One line for a header or a log: ``rdn-ct-x2 (rdn_small, torch fp32, sha256 0123abcd...)``."""
        return (
            f"{self.model} ({self.architecture}, {self.runtime} {self.precision}, "
            f"sha256 {self.weights_sha256[:16]}, edgesr {self.edgesr_version})"
        )


@dataclass(frozen=True)
class EnhancerResult:
    """An enhanced or reconstructed volume and what describes it.

    Attributes:
        image: float32 ``[S, H, W]``: SR output in the input's units (HU for CT given in HU), or the
            reconstruction's magnitude in the k-space's own scale. A 4-D input's volumes follow one
            another, as it was read (``meta["volumes"]`` of them).
        spacing: millimetres ``(slice, row, column)`` of ``image``: the input's, with the in-plane
            spacing divided by the SR scale. Recon: the ISMRMRD header's reconSpace voxel size; None
            for arrays and fastMRI files (they carry no geometry).
        units: ``hu`` or ``raw`` (SR), ``magnitude`` (recon).
        affine: the output's NIfTI voxel-to-world affine where the input has one (NIfTI, DICOM; ISMRMRD
            acquisitions' positions and directions); else None.
        provenance: the model that made it.
        meta: the input's format details (DICOM modality, series UID, files), passed through, and for
            SR ``volumes``: how many 3-D volumes ``image`` holds.
        warnings: what the caller should know about this result, in words that name no file (an MR
            input that looks reconstructed finer than it was acquired, see
            :mod:`edgesr.physics.spectrum`); empty when there is nothing to say.
    """

    image: np.ndarray
    spacing: tuple[float, float, float] | None
    units: str
    affine: np.ndarray | None
    provenance: Provenance
    meta: Mapping[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


class _SerialPredictor:
    """A predictor whose calls take a lock: one model call at a time, whatever thread asks."""

    def __init__(self, predictor: Predictor) -> None:
        self._predictor = predictor
        self._lock = threading.Lock()
        self.fixed_lr_size = fixed_crop(predictor)

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with self._lock:
            return self._predictor(inputs)


class Enhancer:
    """One model, ready to enhance images (SR) or reconstruct raw k-space (recon).

    Build it with :meth:`from_shipped`, :meth:`from_checkpoint` or :meth:`from_artifact`; the
    constructor takes any predictor of the model contract with its spec.
    """

    def __init__(self, predictor: Predictor, spec: ModelSpec, provenance: Provenance) -> None:
        self._predictor = _SerialPredictor(predictor)
        self.spec = spec
        self.provenance = provenance

    def __repr__(self) -> str:
        return f"Enhancer({self.provenance.describe()}, task={self.spec.task})"

    @property
    def task(self) -> str:
        """``sr`` or ``recon``."""
        return self.spec.task

    @property
    def scale(self) -> int:
        """The SR upsampling factor; 1 for a recon model."""
        return self.spec.sr.scale if self.spec.sr is not None else 1

    # --- Building ---------------------------------------------------------------------------------

    @classmethod
    def from_source(
        cls,
        *,
        model: str = "",
        checkpoint: str | os.PathLike[str] = "",
        artifact: str | os.PathLike[str] = "",
        device: str = "auto",
        precision: str = "fp32",
    ) -> Enhancer:
        """The one of a shipped ``model``, a ``checkpoint`` folder or an exported ``artifact`` folder that
        is given (as the commands' ``model=``, ``checkpoint=``, ``artifact=``).

        Args:
            precision: for a model or checkpoint run in torch, ``fp32`` or ``bf16`` (see
                :meth:`from_shipped`); an artifact runs at the precision it was verified for.

        Raises:
            ValueError: none or more than one of them given, or a precision for an artifact.
        """
        given = [
            key
            for key, value in (("model", model), ("checkpoint", checkpoint), ("artifact", artifact))
            if value
        ]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of model, checkpoint or artifact (given: {', '.join(given) or 'none'})"
            )
        if artifact:
            if precision != "fp32":
                raise ValueError(
                    f"precision={precision!r} is for models run in torch; an artifact runs at the "
                    "precision it was exported and verified for (edgesr export ... precisions=[...])"
                )
            return cls.from_artifact(artifact, device=None if device == "auto" else device)
        if checkpoint:
            return cls.from_checkpoint(checkpoint, device=device, precision=precision)
        return cls.from_shipped(model, device=device, precision=precision)

    @classmethod
    def from_shipped(cls, name: str, *, device: str = "auto", precision: str = "fp32") -> Enhancer:
        """A model that ships with edgesr (``edgesr.list_shipped()``), in torch on ``device``.

        ``precision="bf16"`` runs it under torch's BF16 autocast: convolutions in BF16, FFTs and data
        consistency in FP32. Faster on CPUs with BF16 units (AVX512-BF16, AMX) and on GPUs; measured
        on a Zen 5 EPYC: `modl-r4-edge` 1.3x faster than in FP32 at the same PSNR. Elsewhere slower.
        """
        from edgesr.teachers import teacher_path

        return cls._from_folder(teacher_path(name), name, device, precision)

    @classmethod
    def from_checkpoint(
        cls, folder: str | os.PathLike[str], *, device: str = "auto", precision: str = "fp32"
    ) -> Enhancer:
        """A checkpoint written by ``edgesr train`` or ``edgesr compress`` (its ``best/`` or ``last/``);
        ``precision`` as for :meth:`from_shipped`."""
        return cls._from_folder(Path(folder), str(folder), device, precision)

    @classmethod
    def from_artifact(
        cls, folder: str | os.PathLike[str], *, device: str | None = None, threads: int = 0
    ) -> Enhancer:
        """An artifact folder written by ``edgesr export``: every file is checked against the manifest's
        sha256 before it is opened, and the runtime runs it at the precision it was verified for.

        Args:
            device: for ``torch`` artifacts (default: CUDA when there is a GPU); runtimes pick their own.
            threads: runtime threads (0: the runtime's default).

        Raises:
            DataError: not an artifact, or a file missing, changed or outside the folder.
            ConfigError: the artifact's runtime cannot run here (a TensorRT engine without TensorRT).
        """
        from edgesr.export.artifact import open_artifact

        predictor, manifest = open_artifact(folder, threads=threads, device=device)
        source = dict(manifest.source)
        provenance = Provenance(
            model=str(folder),
            architecture=str(source.get("model", "?")),
            weights_sha256=str(source.get("weights_sha256", "")),
            runtime=manifest.runtime,
            precision=manifest.precision,
            artifact_sha256=str(manifest.files.get(manifest.entry, "")),
        )
        return cls(predictor, manifest.spec, provenance)

    @classmethod
    def _from_folder(cls, folder: Path, name: str, device: str, precision: str) -> Enhancer:
        from edgesr.train.checkpoint import load_for_inference, weights_sha256

        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16 for a model run in torch; got {precision!r}")
        model, spec, meta = load_for_inference(folder)
        predictor = TorchPredictor(model.to(pick_device(device)), spec, precision=precision)
        provenance = Provenance(
            model=name,
            architecture=str(meta.get("model", "?")),
            weights_sha256=weights_sha256(folder),
            runtime="torch",
            precision=predictor.executed_precision,
        )
        return cls(predictor, spec, provenance)

    # --- Running ----------------------------------------------------------------------------------

    def enhance(
        self,
        image: np.ndarray | ImageVolume | str | os.PathLike[str],
        *,
        spacing: Sequence[float] | None = None,
        units: str = "auto",
        tile: int = DEFAULT_TILE,
        halo: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> EnhancerResult:
        """Super-resolves an image volume.

        Args:
            image: ``[H, W]`` or ``[S, H, W]`` real values, a loaded :class:`~edgesr.ImageVolume`, or a
                path that :func:`edgesr.load_image` reads (DICOM folder, NIfTI, PNG, TIFF, NPY). A
                volume with ``volumes > 1`` (a 4-D NIfTI: fMRI, diffusion) is enhanced volume by volume,
                each normalised by its own maximum, and the result keeps the same layout.
            spacing: for arrays, millimetres ``(row, column)`` or ``(slice, row, column)``.
            units: ``hu``, ``raw`` or ``auto`` (see :func:`edgesr.pipeline.resolve_units`): a CT model
                needs to know whether an array holds Hounsfield units.
            tile: LR tile side in pixels (0: whole image); tiling is exact (the halo is the model's
                receptive radius), it only bounds memory.
            halo: LR pixels of context per tile; default: exact.
            progress: called as ``progress(done, total)`` after each tile (``total``: tiles over all
                slices), from the calling thread; for a progress bar on large volumes.

        Raises:
            ConfigError: a recon model, or ``spacing`` given with a volume that carries its own.
            DataError: the image cannot be used (naming the problem).
        """
        if self.spec.sr is None:
            raise ConfigError(f"{self.provenance.model} is a recon model: call reconstruct(kspace, mask=...)")
        volume = _image_volume(image, spacing)
        # A 4-D image's volumes are scans of their own (a b=0 volume is many times brighter than a
        # b=1000 one): each is prepared, normalised by its own maximum, as in training. All are prepared
        # before any runs, so that a bad volume fails before minutes of work and progress has one total.
        crop = fixed_crop(self._predictor)
        prepared = [
            prepare_sr(self.spec, volume.volume(t), units=units, tile=tile, halo=halo, crop=crop)
            for t in range(volume.volumes)
        ]
        total, done = sum(p.count() for p in prepared), 0
        outputs = []
        for one in prepared:
            results = run(self._predictor, one)
            if progress is not None:
                results = _reporting(results, total, progress, start=done)
                done += one.count()
            outputs.append(finish(self.spec, one, results))
        output = outputs[0] if len(outputs) == 1 else np.concatenate(outputs)
        warnings: tuple[str, ...] = ()
        # MR only: CT (the model's or the file's) has no k-space acquisition to interpolate.
        if not self.spec.intensity.is_ct and volume.meta.get("modality", "MR") in ("MR", ""):
            warning = interpolation_warning(volume.volume(0).data)
            warnings = (warning,) if warning is not None else ()
        sr = self.spec.sr
        affine = None
        if volume.affine is not None:
            affine = upsampled_affine(volume.affine, sr.scale, sr.degradation, volume.data.shape[1:])
        slice_mm, row_mm, col_mm = volume.spacing
        return EnhancerResult(
            output,
            (slice_mm, row_mm / sr.scale, col_mm / sr.scale),
            prepared[0].intensity.units,
            affine,
            self.provenance,
            {**volume.meta, "volumes": volume.volumes},
            warnings,
        )

    def reconstruct(
        self,
        kspace: np.ndarray | KSpaceVolume | str | os.PathLike[str],
        *,
        mask: np.ndarray | None = None,
        maps: str | np.ndarray | None = None,
    ) -> EnhancerResult:
        """Reconstructs undersampled multi-coil k-space.

        Args:
            kspace: complex ``[C, H, W]`` or ``[S, C, H, W]`` (H readout, W phase encode, DC at the
                centre), a loaded :class:`~edgesr.KSpaceVolume`, or a fastMRI / ISMRMRD HDF5 path.
            mask: ``[W]`` 0/1, the acquired columns (arrays only); default: the non-zero columns.
            maps: ``lowres`` or ``espirit`` (estimated from the ACS lines; default: the model's), or
                complex coil maps of the k-space's shape.

        Raises:
            ConfigError: an SR model, or ``mask`` given with loaded k-space.
            DataError: the k-space cannot be used (naming the problem).
        """
        if self.spec.recon is None:
            raise ConfigError(f"{self.provenance.model} is an SR model: call enhance(image)")
        if isinstance(kspace, KSpaceVolume | str | os.PathLike):
            if mask is not None:
                raise ConfigError("mask= is for k-space arrays; loaded k-space carries its own mask")
            if not isinstance(kspace, KSpaceVolume):
                from edgesr.data.kspace import load_kspace

                kspace = load_kspace(Path(kspace))
            volume = kspace
        else:
            volume = kspace_from_arrays(kspace, mask)
        if isinstance(maps, np.ndarray) and maps.ndim == 3:
            maps = maps[None]
        prepared = prepare_recon(self.spec, volume, maps=maps)
        output = finish(self.spec, prepared, run(self._predictor, prepared))
        warnings = _kspace_warnings(volume)
        silent = ~np.abs(volume.kspace).reshape(volume.kspace.shape[0], -1).any(axis=1)
        if silent.any():  # nothing measured: the image of zero k-space is zero, not the network's bias
            output = output.copy()
            output[silent] = 0.0
        if volume.recon_shape is not None:  # the header's reconSpace: a larger acquired grid is cropped
            output = np.ascontiguousarray(center_crop(output, volume.recon_shape))
        meta = {"prewhitened": volume.prewhitened, "format": volume.format}
        return EnhancerResult(
            output, volume.spacing, "magnitude", volume.affine, self.provenance, meta, warnings
        )


def _reporting(
    results: Iterator[tuple[Any, torch.Tensor]],
    total: int,
    progress: Callable[[int, int], None],
    *,
    start: int = 0,
) -> Iterator[tuple[Any, torch.Tensor]]:
    for done, result in enumerate(results, start=start + 1):
        yield result
        progress(done, total)


def _image_volume(
    image: np.ndarray | ImageVolume | str | os.PathLike[str], spacing: Sequence[float] | None
) -> ImageVolume:
    if isinstance(image, ImageVolume | str | os.PathLike):
        if spacing is not None:
            raise ConfigError("spacing= is for arrays; a loaded or read volume carries its own")
        return image if isinstance(image, ImageVolume) else load_image(Path(image))
    if isinstance(image, torch.Tensor):
        raise DataError("image is a torch tensor; pass a NumPy array (image.cpu().numpy())")
    return volume_from_array(np.asarray(image), spacing=spacing)


__all__ = ["Enhancer", "EnhancerResult", "Provenance"]


def _kspace_warnings(volume: KSpaceVolume) -> tuple[str, ...]:
    """What a caller should know about raw k-space before trusting its reconstruction."""
    warnings = []
    mask = np.asarray(volume.mask) > 0
    if mask.all():  # every k-space line measured: nothing to reconstruct
        warnings.append(
            "the k-space is fully sampled (every line measured): the network was trained to fill "
            "unmeasured lines and can only alter a complete acquisition; the image returned is the "
            "network's, while the k-space's own inverse FFT would be exact"
        )
    # A measured line holds noise at least; columns of exact zeros in every slice and coil were not
    # measured, whatever the mask says, and data consistency would hold them at zero.
    empty = mask & ~np.abs(volume.kspace).reshape(-1, volume.kspace.shape[-1]).any(axis=0)
    if empty.any():
        warnings.append(
            f"the mask marks {int(empty.sum())} of {int(mask.sum())} acquired columns that hold only "
            "zeros: they are treated as measured zeros (check that the mask belongs to this k-space)"
        )
    silent = [str(i) for i, s in enumerate(volume.kspace) if not np.abs(s).any()]
    if silent:
        warnings.append(f"slice(s) {', '.join(silent[:8])} hold no signal (all zeros): their images are zero")
    return tuple(warnings)
