"""One inference path for every consumer: ``prepare(spec, data) -> run(predictor, prepared) -> finish``.

``enhance``, ``evaluate``, and later compression, export checks, benchmarks, the Python API and the
servers all run a model through these three steps, so pre- and post-processing exist once:

* :func:`prepare` maps the input to the network's units as the :class:`~edgesr.spec.ModelSpec` says
  (CT Hounsfield units -> ``HU + 1024`` clipped at 0, padding excluded; division by the volume's
  reference), and lazily yields the network's inputs by name: SR tiles with their halo and the
  whole-image global skip ``base``; recon slices with coil compression and coil-map estimation.
* :func:`run` feeds each item to a *predictor*: any callable from named input tensors to the output
  tensor, a :class:`TorchPredictor` today, an ONNX Runtime / OpenVINO / TensorRT session later. A
  runtime never gets its own copy of the pre- or post-processing.
* :func:`finish` stitches the outputs and maps them back to the input's units (padding restored).

SR tiling is exact, not blended: the global skip is computed once on the whole image, each tile is run
with a halo of real context (by default the network's measured receptive radius, recorded in the
spec), and only the tile's own centre is kept, so the result equals whole-image inference.

Example:
    >>> model, spec, _ = load_for_inference("edgesr/weights/rdn-ct-x2")  # doctest: +SKIP
    >>> prepared = prepare(spec, load_image("head_ct/"))                  # DICOM in HU  # doctest: +SKIP
    >>> hu = finish(spec, prepared, run(TorchPredictor(model, spec), prepared))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgesr.baselines import interpolate_base
from edgesr.data.images import ImageVolume
from edgesr.data.kspace import KSpaceVolume
from edgesr.errors import ConfigError, DataError
from edgesr.models.fold import MIN_KERNEL as FOLD_MIN_KERNEL
from edgesr.models.fold import fold_subpixel_tail
from edgesr.physics.coils import ESTIMATION_METHODS, MIN_ACS_LINES, acs_lines, estimate_coil_maps
from edgesr.physics.degrade import lr_grid_offset
from edgesr.physics.fft import complex_abs, from_complex, ifft2c_complex
from edgesr.spec import UNITS, IntensitySpec, ModelSpec

DEFAULT_TILE = 128  # LR pixels per tile side: bounds memory on large images; exact with the spec's halo

# Named network inputs ``[1, C, H, W]`` -> the network's first output ``[1, C', H', W']``.
Predictor = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]


class TorchPredictor:
    """A torch module as a predictor: inputs are passed positionally in the spec's order.

    ``fixed_lr_size`` makes the pipeline feed it SR inputs of that one size, as it feeds a fixed-shape
    export; the export's verification records its inputs through it.

    On the CPU the predictor runs a copy of the module with its convolution weights in channels-last
    layout (``channels_last=None`` means: on the CPU), which oneDNN's convolutions take without
    reordering: on 2 Zen 5 cores at 256x256 output the shipped SR models ran 1.14-1.32x faster and
    `modl-r4` 1.18x, outputs within 5e-7 of their range (``benchmarks/torch_layout.py``;
    benchmarks/RESULTS.md, "Compression"). A copy, because the caller's module may still be trained,
    pruned or saved (safetensors refuses tensors that are not contiguous). :attr:`memory_format` says
    which ran.

    ``precision="bf16"`` (or ``"fp16"``) runs the module under torch's autocast on its device: the
    convolutions and matrix products in that dtype, reductions, FFTs and data consistency in FP32
    (:func:`edgesr.physics.fft.full_precision`). On CPUs with native BF16 (AVX512-BF16, AMX) that is a
    faster torch path; on others autocast emulates it, slower than FP32. It is a precision of the same
    model, scored like any other: :attr:`executed_precision` says what ran (``"bf16+fp32"``).

    An SR module runs with its convolution to the image folded before the last sub-pixel shuffle
    (:func:`edgesr.models.fold.fold_subpixel_tail`, on a copy): the same function, outputs within float
    rounding, and the SRGAN models 1.65-1.9x faster in torch on 2 Zen 5 cores (as the ONNX export runs
    it; RDN's 3x3 tail, which gained nothing, stays unless ``fold_min_kernel=3``).
    ``fold=False`` runs the module as it is.
    """

    def __init__(
        self,
        module: nn.Module,
        spec: ModelSpec,
        device: torch.device | str | None = None,
        *,
        fixed_lr_size: int | None = None,
        channels_last: bool | None = None,
        precision: str = "fp32",
        compile_mode: str = "",
        fold: bool = True,
        fold_min_kernel: int = FOLD_MIN_KERNEL,
    ) -> None:
        if precision not in AUTOCAST_DTYPES:
            raise ValueError(f"precision must be one of {', '.join(AUTOCAST_DTYPES)}; got {precision!r}")
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}; got {compile_mode!r}")
        module = module.eval()
        self.input_names = spec.input_names
        self.device = torch.device(device) if device is not None else next(module.parameters()).device
        self.fixed_lr_size = fixed_lr_size
        if channels_last is None:
            channels_last = self.device.type == "cpu"
        folded = fold_subpixel_tail(module, min_kernel=fold_min_kernel) if fold else module
        self.folded = folded is not module
        if channels_last:  # the folded module is a copy already: converted in place, not copied again
            folded = _channels_last(folded) if self.folded else _channels_last(copy.deepcopy(module))
        self.module = folded
        self.memory_format = "channels_last" if channels_last else "contiguous"
        # torch.compile (TorchInductor): kernels generated for this device on the first call of each
        # input shape (``dynamic=None``: a second size recompiles once with symbolic sizes). MoDL traces
        # whole (no graph break), but Inductor generates no code for complex tensors, so its CG solve
        # runs eager kernels inside the graph: on 2 Zen 4 cores compiling gained nothing for it
        # (benchmarks/RESULTS.md, "modl-r4-edge"). Dynamo keeps 8 compiled versions of a forward per
        # process (torch._dynamo.config.recompile_limit) and runs eagerly past them, with a warning.
        self.compile_mode = compile_mode
        if compile_mode:
            compiled = torch.compile(self.module, mode=None if compile_mode == "default" else compile_mode)
            self.module = cast(nn.Module, compiled)  # an OptimizedModule: an nn.Module wrapping the copy
        self.precision = precision
        self._autocast_dtype = AUTOCAST_DTYPES[precision]
        # Autocast runs convolutions and matrix products in the dtype and keeps the rest in FP32.
        self.executed_precision = "fp32" if self._autocast_dtype is None else f"{precision}+fp32"

    @torch.no_grad()
    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise ValueError(
                f"predictor inputs lack {', '.join(missing)} (the spec names {self.input_names})"
            )
        args = [inputs[name].to(self.device, torch.float32) for name in self.input_names]
        if self._autocast_dtype is None:
            return self.module(*args).float().cpu()
        with torch.autocast(self.device.type, dtype=self._autocast_dtype):
            return self.module(*args).float().cpu()


# torch.compile's modes a torch predictor can run under ("": eager).
COMPILE_MODES = ("", "default", "reduce-overhead", "max-autotune")

# The precisions a torch predictor runs at: FP32, or autocast to a half-precision dtype.
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _channels_last(module: nn.Module) -> nn.Module:
    """``module`` (a copy, changed in place) with channels-last 4-D weights (activations follow them)."""
    # Module.to takes memory_format at run time; torch's type stubs leave the keyword out.
    return module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


# --- Intensities ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntensityMap:
    """The mapping applied to one input volume, kept so that :func:`finish` can invert it.

    ``network = (max(value + offset, clip_min) / reference)``; padding pixels are fed as 0 (air) and
    get their own input values back in the output (from the nearest input pixel).
    """

    units: str  # hu or raw
    offset: float
    clip_min: float | None
    reference: float
    padding: np.ndarray | None = None  # bool [S, H, W] on the input grid

    def forward(self, values: np.ndarray) -> np.ndarray:
        mapped = values + self.offset
        if self.clip_min is not None:
            mapped = np.maximum(mapped, self.clip_min)
        if self.padding is not None:
            mapped = np.where(self.padding, 0.0, mapped)
        return (mapped / self.reference).astype(np.float32)

    def inverse(self, network: np.ndarray) -> np.ndarray:
        return (network * self.reference - self.offset).astype(np.float32)


def resolve_units(spec: ModelSpec | IntensitySpec, image: ImageVolume, units: str) -> str:
    """``hu`` or ``raw`` for this input, from ``units`` (``auto``, ``hu`` or ``raw``) and the data.

    ``auto``: an MR model takes any magnitude scale (``raw``), but not a DICOM series of another
    modality (CT numbers, negative for air, are not magnitudes). A CT model takes a CT DICOM series in
    Hounsfield units (the modality LUT says so); for NIfTI, NPY, PNG and TIFF it takes HU when the
    image holds air-like values below -200 (no non-negative unit does), and otherwise asks, since a
    soft-tissue crop in HU and an image already in the model's units look alike.
    """
    if units not in UNITS:
        raise ConfigError(f"units={units!r} is not valid; choose one of {', '.join(UNITS)}")
    intensity = spec if isinstance(spec, IntensitySpec) else spec.intensity
    if not intensity.is_ct:
        if units == "hu":
            raise ConfigError(
                "units=hu is for CT models; this model is MR (its input is any magnitude scale)"
            )
        modality = str(image.meta.get("modality", "")) if image.format == "dicom" else ""
        if units == "auto" and modality not in ("", "MR"):
            # As a CT model refuses MR: an MR model on CT numbers (negative air) gives nonsense quietly.
            instead = "use a CT model such as rdn-ct-x2, or " if modality == "CT" else ""
            raise DataError(
                f"{image.source}: a DICOM series of modality {modality} given to an MR model (it enhances MR "
                f"magnitudes); {instead}pass units=raw to run it on these values anyway"
            )
        return "raw"
    if units != "auto":
        return units
    if image.format == "dicom":
        modality = str(image.meta.get("modality", ""))
        if modality == "CT":
            return "hu"
        hint = (
            "pass units=hu if these are CT numbers (the series has no Modality tag), or units=raw if they "
            "are already HU + 1024"
            if not modality
            else "pass units=raw to run it on these values anyway"
        )
        raise DataError(
            f"{image.source}: a DICOM series of modality {modality or '(none)'} given to a CT model; {hint}"
        )
    low = float(image.data.min())
    if low < -200:
        return "hu"
    raise DataError(
        f"{image.source}: cannot tell whether these values are Hounsfield units (minimum {low:g}, no "
        "air below -200 HU); pass units=hu (CT numbers) or units=raw (already HU + 1024 clipped at 0, "
        "or any non-negative intensity scale)"
    )


def intensity_map(
    spec: ModelSpec | IntensitySpec,
    image: ImageVolume,
    *,
    units: str = "auto",
    reference: float | None = None,
) -> IntensityMap:
    """The spec's intensity convention for this volume (see :func:`resolve_units`).

    Args:
        reference: the normaliser in offset units; default: the spec's (the volume's maximum over
            non-padding pixels, as in training). Evaluation passes the protocol's.
    """
    intensity = spec if isinstance(spec, IntensitySpec) else spec.intensity
    if intensity.normaliser != "max":
        raise ValueError(
            f"image models normalise by the volume maximum; the spec says {intensity.normaliser!r}"
        )
    resolved = resolve_units(spec, image, units)
    hu = resolved == "hu"
    padding = image.padding.copy() if image.padding is not None else None
    if hu and intensity.padding_below_hu is not None:
        below = image.data < intensity.padding_below_hu
        padding = below if padding is None else (padding | below)
    if padding is not None and not padding.any():
        padding = None
    offset = intensity.hu_offset if hu else 0.0
    clip_min = intensity.clip_min if hu else None
    if reference is None:
        mapped = image.data + offset
        if clip_min is not None:
            mapped = np.maximum(mapped, clip_min)
        tissue = mapped if padding is None else mapped[~padding]
        reference = float(tissue.max()) if tissue.size else float("nan")
    if not math.isfinite(reference) or reference <= 0:
        raise DataError(
            f"{image.source}: the image has no positive intensities in the model's units "
            f"(reference {reference:g}); nothing to enhance"
        )
    return IntensityMap(resolved, offset, clip_min, reference, padding)


# --- SR ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SRItem:
    """One tile: the network's named inputs and where its centre goes."""

    inputs: dict[str, torch.Tensor]
    slice_index: int
    rows: tuple[int, int]  # the tile's own LR rows [top, bottom)
    cols: tuple[int, int]
    origin: tuple[int, int]  # LR (row, col) of the input crop's corner (tile minus halo)


@dataclass
class PreparedSR:
    """A volume ready for an SR network; :meth:`items` yields its tiles lazily (memory: one slice)."""

    spec: ModelSpec
    network: np.ndarray  # float32 [S, h, w] in the network's units
    intensity: IntensityMap
    tile: int
    halo: int
    source: str = ""
    original: np.ndarray | None = None  # the input values, kept only where padding must be restored
    crop: int | None = None  # a fixed-shape network's LR input size: every input crop is exactly this

    def count(self) -> int:
        """How many items :meth:`items` yields (tiles over all slices): a progress bar's total."""
        _, h, w = self.network.shape
        tile = self.tile if self.crop is None else self.crop - 2 * self.halo
        return self.network.shape[0] * len(_tiles(h, tile)) * len(_tiles(w, tile))

    def items(self) -> Iterator[SRItem]:
        assert self.spec.sr is not None  # noqa: S101 (prepare() checked the task)
        sr = self.spec.sr
        _, h, w = self.network.shape
        tile = self.tile if self.crop is None else self.crop - 2 * self.halo
        for index, image in enumerate(self.network):
            lr = torch.from_numpy(image)[None, None]
            # The global skip on the whole image: zero-fill on a tile would ring at its edges.
            base = interpolate_base(lr, sr.scale, sr.upsampler, sr.degradation)
            for top, bottom in _tiles(h, tile):
                for left, right in _tiles(w, tile):
                    if self.crop is None:
                        t0, b0 = max(0, top - self.halo), min(h, bottom + self.halo)
                        l0, r0 = max(0, left - self.halo), min(w, right + self.halo)
                    else:
                        (t0, b0), (l0, r0) = (
                            _fixed_window(top, h, self.crop, self.halo),
                            _fixed_window(left, w, self.crop, self.halo),
                        )
                    s = sr.scale
                    inputs = {
                        "lr": lr[..., t0:b0, l0:r0],
                        "base": base[..., t0 * s : b0 * s, l0 * s : r0 * s],
                    }
                    if self.crop is not None:
                        inputs = _pad_to(inputs, self.crop, s)
                    yield SRItem(inputs, index, (top, bottom), (left, right), (t0, l0))


def _tiles(size: int, tile: int) -> list[tuple[int, int]]:
    if tile <= 0 or tile >= size:
        return [(0, size)]
    return [(start, min(start + tile, size)) for start in range(0, size, tile)]


def _fixed_window(start: int, size: int, crop: int, halo: int) -> tuple[int, int]:
    """The ``crop``-long input window for the tile that starts at ``start``, inside ``[0, size)``.

    It begins ``halo`` before the tile and is moved inwards where it would leave the image, so every edge
    of the window is either an image edge (as in whole-image inference) or at least ``halo`` from the
    tile: the tile stays exact. An image shorter than ``crop`` is one window, padded by :func:`_pad_to`.
    """
    if size <= crop:
        return 0, size
    first = min(max(0, start - halo), size - crop)
    return first, first + crop


def _pad_to(inputs: dict[str, torch.Tensor], crop: int, scale: int) -> dict[str, torch.Tensor]:
    """SR inputs padded at the bottom and right (edge values repeated) to ``crop`` LR pixels.

    Only for images smaller than a fixed-shape network's input. The padded part of the output is
    dropped, but the network sees the repeated edge instead of the image's end, so the last
    ``receptive_radius`` pixels before the padding differ slightly from whole-image inference: the
    export's verification measures this (``fixed_shape``) on real test slices.
    """
    lr = inputs["lr"]
    pad_h, pad_w = crop - lr.shape[-2], crop - lr.shape[-1]
    if pad_h <= 0 and pad_w <= 0:
        return inputs
    return {
        "lr": F.pad(lr, (0, pad_w, 0, pad_h), mode="replicate"),
        "base": F.pad(inputs["base"], (0, pad_w * scale, 0, pad_h * scale), mode="replicate"),
    }


def _as_volume(data: ImageVolume | np.ndarray) -> ImageVolume:
    if isinstance(data, ImageVolume):
        return data
    array = np.asarray(data, dtype=np.float32)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"image must be [H, W] or [S, H, W]; got shape {array.shape}")
    if not np.isfinite(array).all():
        raise DataError("image holds NaN/Inf values")
    return ImageVolume(array, (1.0, 1.0, 1.0), Path("<array>"), "array")


def prepare_sr(
    spec: ModelSpec,
    data: ImageVolume | np.ndarray,
    *,
    units: str = "auto",
    reference: float | None = None,
    tile: int = DEFAULT_TILE,
    halo: int | None = None,
    crop: int | None = None,
) -> PreparedSR:
    """An image volume for an SR model (see :func:`prepare`).

    ``crop`` is for networks built for one input size (fixed-shape exports): every input is a
    ``crop x crop`` LR window inside the image, tiles of ``crop - 2 * halo`` are kept, and the result is
    still exactly whole-image inference; an image smaller than ``crop`` is padded (see
    :func:`_pad_to`). ``tile`` is then unused.

    Raises:
        DataError: the image is too small to upsample.
        ConfigError: ``crop`` is too small for the halo of an image that needs several inputs.
    """
    if spec.sr is None:
        raise ValueError(f"prepare_sr needs an SR spec; got a {spec.task} spec")
    image = _as_volume(data)
    if image.volumes > 1:  # one maximum over all of them would scale a dim volume by a bright one's
        raise ValueError(
            f"prepare_sr takes one 3-D volume; {image.source} holds {image.volumes}: prepare each "
            "(image.volume(t)) on its own"
        )
    if min(image.data.shape[1:]) < 2:
        raise DataError(
            f"{image.source}: image of shape {image.data.shape[1:]} is too small to upsample "
            "(at least 2x2 pixels)"
        )
    halo = spec.sr.receptive_radius if halo is None else halo
    if crop is not None and crop <= 2 * halo and max(image.data.shape[1:]) > crop:
        height, width = image.data.shape[1:]
        raise ConfigError(
            f"{image.source}: a {height}x{width} image needs several {crop}x{crop} inputs, and inputs "
            f"this small leave no tile inside the model's halo of {halo} pixels; export with an input_size "
            f"above {2 * halo * spec.sr.scale} (output pixels)"
        )
    mapping = intensity_map(spec, image, units=units, reference=reference)
    return PreparedSR(
        spec,
        mapping.forward(image.data),
        mapping,
        tile,
        halo,
        str(image.source),
        image.data if mapping.padding is not None else None,
        crop,
    )


def fixed_crop(predictor: Predictor) -> int | None:
    """The LR input size a fixed-shape SR predictor needs (its ``fixed_lr_size``), else None."""
    size = getattr(predictor, "fixed_lr_size", None)
    return int(size) if size else None


def nearest_upsample(values: np.ndarray, scale: int, degradation: str) -> np.ndarray:
    """The nearest LR pixel's value at every HR pixel, on the degradation's own grid.

    ``[S, h, w] -> [S, h*s, w*s]``. HR pixel ``i`` lies at LR coordinate ``(i - offset) / s``; ties
    (k-space grids at even scales) go up, so every LR pixel owns ``s`` HR pixels along each axis.
    """

    def nearest(n: int) -> np.ndarray:
        offset = lr_grid_offset(degradation, n * scale, scale)
        position = (np.arange(n * scale) - offset) / scale
        return np.clip(np.floor(position + 0.5), 0, n - 1).astype(int)

    rows, cols = nearest(values.shape[1]), nearest(values.shape[2])
    return values[:, rows][:, :, cols]


def finish_sr(
    spec: ModelSpec, prepared: PreparedSR, results: Iterable[tuple[SRItem, torch.Tensor]]
) -> np.ndarray:
    """Stitches tile outputs into ``[S, h*s, w*s]`` float32 in the input's units (padding restored)."""
    assert spec.sr is not None  # noqa: S101
    s = spec.sr.scale
    count, h, w = prepared.network.shape
    out = np.zeros((count, h * s, w * s), dtype=np.float32)
    for item, pred in results:
        if pred.dim() != 4 or pred.shape[:2] != (1, 1):
            raise ValueError(f"the predictor's output must be [1, 1, H, W]; got shape {tuple(pred.shape)}")
        (top, bottom), (left, right), (t0, l0) = item.rows, item.cols, item.origin
        keep = pred[0, 0, (top - t0) * s : (bottom - t0) * s, (left - l0) * s : (right - l0) * s]
        out[item.slice_index, top * s : bottom * s, left * s : right * s] = keep.numpy()
    result = prepared.intensity.inverse(out)
    if prepared.intensity.padding is not None and prepared.original is not None:
        hr_padding = nearest_upsample(prepared.intensity.padding, s, spec.sr.degradation)
        result[hr_padding] = nearest_upsample(prepared.original, s, spec.sr.degradation)[hr_padding]
    return result


# --- Recon ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReconItem:
    inputs: dict[str, torch.Tensor]
    slice_index: int


@dataclass
class PreparedRecon:
    """Raw k-space ready for a recon model; :meth:`items` estimates coil maps slice by slice."""

    spec: ModelSpec
    kspace: np.ndarray  # complex64 [S, C, H, W] / reference (coil-compressed to the spec's coils)
    mask: torch.Tensor  # [W]
    maps: str | np.ndarray  # an estimation method, or given maps complex64 [S, C, H, W]
    reference: float
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def items(self) -> Iterator[ReconItem]:
        mask4 = self.mask.view(1, 1, 1, -1)
        for index, slice_kspace in enumerate(self.kspace):
            pairs = from_complex(torch.from_numpy(slice_kspace))
            if isinstance(self.maps, str):
                maps = estimate_coil_maps(pairs, self.mask, method=self.maps)
            else:
                maps = from_complex(torch.from_numpy(self.maps[index]))
            yield ReconItem(
                {"masked_kspace": pairs[None] * mask4, "mask": mask4, "sens_maps": maps[None]}, index
            )


def coil_compression_matrix(kspace: np.ndarray, coils: int) -> np.ndarray:
    """The ``[coils, C]`` matrix ``U^H`` that maps ``C`` coils to ``coils`` virtual ones (SVD over all
    samples of the volume). Compression is linear per pixel, so coil maps transform with it too."""
    n = kspace.shape[1]
    if n < coils:
        raise DataError(f"the data has {n} coils; the model needs {coils} (it cannot invent coils)")
    samples = kspace.transpose(1, 0, 2, 3).reshape(n, -1)
    u, _, _ = np.linalg.svd(samples @ samples.conj().T)
    return np.ascontiguousarray(u[:, :coils].conj().T)


def apply_coils(matrix: np.ndarray, data: np.ndarray) -> np.ndarray:
    """``[V, C]`` matrix applied along the coil axis of ``[S, C, H, W]`` -> ``[S, V, H, W]`` complex64."""
    # A matrix product (BLAS) rather than einsum's loops: 1 ms instead of 8 for 8 -> 4 coils at 256x256.
    slices, coils, height, width = data.shape
    flat = np.ascontiguousarray(data, dtype=np.complex64).reshape(slices, coils, height * width)
    return np.matmul(matrix.astype(np.complex64), flat).reshape(slices, matrix.shape[0], height, width)


def coil_compress(kspace: np.ndarray, coils: int) -> np.ndarray:
    """Compresses ``[S, C, H, W]`` k-space to ``coils`` virtual coils (SVD over all samples, per volume)."""
    if kspace.shape[1] == coils:
        return kspace
    return apply_coils(coil_compression_matrix(kspace, coils), kspace)


def prepare_recon(
    spec: ModelSpec,
    data: KSpaceVolume,
    *,
    maps: str | np.ndarray | None = None,
    reference: float | None = None,
) -> PreparedRecon:
    """Raw multi-coil k-space for a recon model (see :func:`prepare`).

    Args:
        maps: ``lowres`` or ``espirit`` (estimated from each slice's ACS lines; default: the spec's),
            or coil maps complex ``[S, C, H, W]`` matching the k-space (simulations know them).
        reference: the normaliser; default: the maximum of the volume's zero-filled
            root-sum-of-squares image (the training data's scale, where the target's maximum is 1).
    """
    if spec.recon is None:
        raise ValueError(f"prepare_recon needs a recon spec; got a {spec.task} spec")
    if spec.intensity.normaliser != "zero-filled-rss-max" or spec.recon.coil_compression != "svd":
        raise ValueError(
            "recon models are fed k-space / the zero-filled RSS maximum, SVD-compressed to their coils; "
            f"the spec says {spec.intensity.normaliser!r}, {spec.recon.coil_compression!r}"
        )
    kspace = data.kspace
    if spec.recon.coils and kspace.shape[1] < spec.recon.coils:
        raise DataError(
            f"{data.source}: the data has {kspace.shape[1]} coil(s); the model needs {spec.recon.coils} "
            "(coils can be compressed, not invented)"
        )
    if isinstance(maps, np.ndarray) and maps.shape != kspace.shape:
        raise DataError(
            f"{data.source}: coil maps of shape {maps.shape} do not match the k-space {kspace.shape}"
        )
    if spec.recon.coils and kspace.shape[1] != spec.recon.coils:
        # Given maps move to the same virtual coils as the k-space: y_v = sum_c U^H[v, c] F(S_c x).
        matrix = coil_compression_matrix(kspace, spec.recon.coils)
        kspace = apply_coils(matrix, kspace)
        if isinstance(maps, np.ndarray):
            maps = apply_coils(matrix, maps)
    method = spec.recon.map_estimation if maps is None else maps
    mask = torch.from_numpy(np.asarray(data.mask, dtype=np.float32))
    if isinstance(method, str):
        if method not in ESTIMATION_METHODS:
            raise ConfigError(f"maps={method!r} is not valid; choose one of {', '.join(ESTIMATION_METHODS)}")
        lines, needed = acs_lines(mask), MIN_ACS_LINES[method]
        if lines < needed:
            raise DataError(
                f"{data.source}: the mask samples {lines} contiguous line(s) through the k-space centre; "
                f"estimating coil maps ({method}) needs a fully sampled centre of at least {needed}"
                + (
                    f" (maps=lowres needs {MIN_ACS_LINES['lowres']})"
                    if lines >= MIN_ACS_LINES["lowres"]
                    else ""
                )
            )
    if reference is None:
        # float64: the sum of squares of a scanner's raw units can overflow float32.
        coil_images = np.abs(ifft2c_complex(torch.from_numpy(kspace)).numpy()).astype(np.float64)
        reference = float(np.sqrt((coil_images**2).sum(axis=1)).max())
    if not math.isfinite(reference) or reference <= 0:
        raise DataError(f"{data.source}: k-space holds no signal")
    return PreparedRecon(
        spec,
        (kspace / reference).astype(np.complex64),
        mask,
        method,
        reference,
        str(data.source),
    )


def finish_recon(
    spec: ModelSpec, prepared: PreparedRecon, results: Iterable[tuple[ReconItem, torch.Tensor]]
) -> np.ndarray:
    """The coil-combined magnitude ``[S, H, W]`` float32 in the data's own intensity scale."""
    images: dict[int, np.ndarray] = {}
    for item, pred in results:
        if pred.dim() != 4 or pred.shape[:2] != (1, 2):
            raise ValueError(f"the predictor's output must be [1, 2, H, W]; got shape {tuple(pred.shape)}")
        images[item.slice_index] = (complex_abs(pred)[0, 0] * prepared.reference).numpy()
    return np.stack([images[i] for i in range(len(images))]).astype(np.float32)


# --- The three steps --------------------------------------------------------------------------------

Prepared = PreparedSR | PreparedRecon


def prepare(spec: ModelSpec, data: ImageVolume | np.ndarray | KSpaceVolume, **options: Any) -> Prepared:
    """Maps ``data`` to the network's inputs as ``spec`` says.

    SR (``data``: an :class:`ImageVolume` or an array ``[S, H, W]``) options: ``units`` (``auto``,
    ``hu``, ``raw``; see :func:`resolve_units`), ``reference``, ``tile``, ``halo``. Recon (``data``: a
    :class:`KSpaceVolume`) options: ``maps``, ``reference``.
    """
    if spec.task == "sr":
        if isinstance(data, KSpaceVolume):
            raise DataError(f"{data.source}: raw k-space given to an SR model; it takes images")
        return prepare_sr(spec, data, **options)
    if not isinstance(data, KSpaceVolume):
        source = data.source if isinstance(data, ImageVolume) else "the input"
        raise DataError(f"{source}: an image given to a recon model; it takes raw k-space (HDF5)")
    return prepare_recon(spec, data, **options)


def run(predictor: Predictor, prepared: Prepared) -> Iterator[tuple[Any, torch.Tensor]]:
    """Feeds every prepared item to the predictor, lazily: ``(item, output)`` pairs."""
    for item in prepared.items():
        yield item, predictor(item.inputs)


def finish(spec: ModelSpec, prepared: Prepared, results: Iterable[tuple[Any, torch.Tensor]]) -> np.ndarray:
    """The outputs as data in the input's units: SR ``[S, h*s, w*s]``, recon magnitude ``[S, H, W]``."""
    if isinstance(prepared, PreparedSR):
        return finish_sr(spec, prepared, results)
    return finish_recon(spec, prepared, results)


def infer(
    spec: ModelSpec, predictor: Predictor, data: ImageVolume | np.ndarray | KSpaceVolume, **options: Any
) -> np.ndarray:
    """``finish(spec, p, run(predictor, p))`` with ``p = prepare(spec, data, **options)``.

    A fixed-shape SR predictor gets inputs of its own size (see :func:`fixed_crop`).
    """
    if spec.task == "sr" and fixed_crop(predictor) is not None:
        options = {**options, "crop": fixed_crop(predictor)}
    prepared = prepare(spec, data, **options)
    return finish(spec, prepared, run(predictor, prepared))
