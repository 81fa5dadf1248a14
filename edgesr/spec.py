"""The model contract: a :class:`ModelSpec` says everything needed to run a model as it was trained.

Every checkpoint, model card and (later) export manifest carries one. Every consumer (``evaluate``,
``enhance``, compression, export, benchmarks, the Python API, the servers) reads it, and runs the
model through :mod:`edgesr.pipeline` (``prepare -> run -> finish``) instead of guessing from the
module's attributes or re-parsing the training config.

What a spec pins:

* **task** and the **network's inputs and outputs** by name, layout and channels (SR: ``lr`` and
  ``base``; recon: ``masked_kspace``, ``mask``, ``sens_maps``), so that a runtime session is fed by
  name exactly like the torch module.
* **SR**: the scale, the degradation the model was trained to invert (it fixes the LR sampling grid),
  the interpolation that forms the global skip ``base`` (computed on the whole LR image), and the
  network's receptive radius (the halo that makes tiled inference exact).
* **Recon**: the coils the network needs (``0``: any number), how coil maps are estimated from the ACS
  lines, and that surplus coils are SVD-compressed.
* **Intensity**: how stored values become the network's units and back. CT: ``max(HU + offset,
  clip_min)`` (air ~0, water ~1024) with padding (DICOM PixelPaddingValue, or values far below air)
  excluded from normalisation and restored in the output; MR: the stored magnitude. Then both are
  divided by a reference taken from the whole volume (its maximum, as in training; recon: the maximum
  of the zero-filled root-sum-of-squares image).

Specs are written once, when a checkpoint is saved; checkpoints from before specs existed are
migrated once with ``edgesr upgrade`` (:func:`edgesr.train.checkpoint.upgrade_checkpoint`), never
filled in with today's defaults at load time.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from typing import Any

from edgesr.errors import DataError

SPEC_VERSION = 1
TASKS = ("sr", "recon")
MODALITIES = ("MR", "CT")
NORMALISERS = ("max", "zero-filled-rss-max")
UNITS = ("auto", "hu", "raw")
CANONICAL_NAMES = {
    "sr": (("lr", "base"), ("sr",)),
    "recon": (("masked_kspace", "mask", "sens_maps"), ("image",)),
}


@dataclass(frozen=True)
class TensorSpec:
    """One named network input or output: ``[batch, channels, height, width]`` float32.

    ``channels == 0`` means "any even number" (complex channel pairs of however many coils).
    """

    name: str
    channels: int
    description: str
    layout: str = "NCHW"
    dtype: str = "float32"


@dataclass(frozen=True)
class IntensitySpec:
    """How stored intensities map to the network's units and back.

    Attributes:
        modality: ``MR`` or ``CT``.
        hu_offset: CT: network value = ``max(HU + hu_offset, clip_min) / reference``.
        clip_min: CT: the lower clip in offset units (0: nothing below air).
        padding_below_hu: CT: values below this (in HU) are scanner padding (e.g. -2000, -3024 outside
            the reconstruction circle), not tissue: excluded from the reference, fed as air, restored.
        normaliser: ``max`` (the volume's maximum over non-padding pixels, as in training) or, for
            recon, ``zero-filled-rss-max`` (the maximum of the zero-filled root-sum-of-squares image).
    """

    modality: str
    normaliser: str = "max"
    hu_offset: float = 0.0
    clip_min: float | None = None
    padding_below_hu: float | None = None

    @property
    def is_ct(self) -> bool:
        return self.modality == "CT"


@dataclass(frozen=True)
class SRSpec:
    """How an SR model is fed: ``lr`` and its whole-image interpolation ``base``."""

    scale: int
    degradation: str  # mr-kspace, ct-blur or bicubic: fixes where LR pixels sit on the HR grid
    upsampler: str  # zero-fill or bicubic: the global skip ``base``
    receptive_radius: int  # LR pixels: a tile halo this wide makes tiled inference exact

    def __post_init__(self) -> None:
        _check("spec.sr.scale", self.scale, (2, 3, 4))
        _check("spec.sr.degradation", self.degradation, ("mr-kspace", "ct-blur", "bicubic"))
        _check("spec.sr.upsampler", self.upsampler, ("zero-fill", "bicubic"))
        if not isinstance(self.receptive_radius, int) or self.receptive_radius < 0:
            raise ValueError(
                f"spec.sr.receptive_radius must be a non-negative integer; got {self.receptive_radius!r}"
            )


@dataclass(frozen=True)
class ReconSpec:
    """How a recon model is fed: multi-coil k-space, its sampling mask and coil maps."""

    coils: int  # 0: any number of coils
    map_estimation: str = "lowres"  # default coil-map estimation from the ACS lines (lowres, espirit)
    coil_compression: str = "svd"  # surplus coils are compressed to ``coils`` virtual coils

    def __post_init__(self) -> None:
        if not isinstance(self.coils, int) or self.coils < 0:
            raise ValueError(f"spec.recon.coils must be a non-negative integer; got {self.coils!r}")
        _check("spec.recon.map_estimation", self.map_estimation, ("lowres", "espirit"))
        _check("spec.recon.coil_compression", self.coil_compression, ("svd",))


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to run a model as it was trained (see the module docstring)."""

    task: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    intensity: IntensitySpec
    sr: SRSpec | None = None
    recon: ReconSpec | None = None
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"spec.task must be one of {TASKS}; got {self.task!r}")
        if (self.task == "sr") != (self.sr is not None) or (self.task == "recon") != (self.recon is not None):
            raise ValueError(f"a {self.task} spec needs its own section ('{self.task}') and no other")
        _check("spec.intensity.modality", self.intensity.modality, MODALITIES)
        _check("spec.intensity.normaliser", self.intensity.normaliser, NORMALISERS)
        for tensor in (*self.inputs, *self.outputs):
            if not isinstance(tensor.name, str) or not isinstance(tensor.channels, int):
                raise ValueError("spec inputs/outputs need a text name and integer channels")
        # The pipeline feeds the networks by these names: a spec cannot rename them.
        names = CANONICAL_NAMES[self.task]
        if (self.input_names, self.output_names) != names:
            raise ValueError(f"a {self.task} spec has inputs {names[0]} and outputs {names[1]}")

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (lists, not tuples), as the spec reads back from ``checkpoint.json``."""
        return typing.cast(dict[str, Any], json.loads(json.dumps(dataclasses.asdict(self))))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "spec") -> ModelSpec:
        """Reads a spec strictly: an unknown or missing key is a :class:`DataError` naming ``source``."""
        try:
            return typing.cast(ModelSpec, _build(cls, raw, "spec"))
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise DataError(f"{source}: invalid model spec ({str(exc)[:200]})") from None

    def describe(self) -> str:
        """One line for people: what goes in and what comes out."""
        if self.sr is not None:
            return (
                f"{self.intensity.modality} SR x{self.sr.scale} ({self.sr.degradation}, "
                f"{self.sr.upsampler} skip)"
            )
        assert self.recon is not None  # noqa: S101 (the constructor guarantees it)
        coils = self.recon.coils or "any number of"
        return f"MR multi-coil recon ({coils} coils, {self.recon.map_estimation} maps)"


def _check(key: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{key} must be one of {', '.join(map(str, choices))}; got {value!r}")


def _build(cls: type, raw: Any, where: str) -> Any:
    """A (nested, frozen) dataclass from plain JSON types; unknown keys raise."""
    if not isinstance(raw, dict):
        raise TypeError(f"{where} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise KeyError(f"unknown key(s) {', '.join(where + '.' + k for k in unknown)}")
    values: dict[str, Any] = {}
    for name in names & set(raw):
        values[name] = _convert(hints[name], raw[name], f"{where}.{name}")
    return cls(**values)


def _convert(hint: Any, value: Any, where: str) -> Any:
    if value is None:
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin is tuple:
        return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if args and origin is not tuple and dataclasses.is_dataclass(args[0]):  # Optional[dataclass]
        return _build(typing.cast(type, args[0]), value, where)
    if dataclasses.is_dataclass(hint):
        return _build(typing.cast(type, hint), value, where)
    return value


# --- Building specs --------------------------------------------------------------------------------

SR_INPUTS = (
    TensorSpec("lr", 1, "low-resolution image / reference, [B, 1, h, w]"),
    TensorSpec("base", 1, "the whole-image interpolation of lr on its own grid, [B, 1, h*s, w*s]"),
)
SR_OUTPUTS = (TensorSpec("sr", 1, "super-resolved image / reference, [B, 1, h*s, w*s]"),)


def ct_intensity() -> IntensitySpec:
    """The CT convention edgesr trains with: ``HU + 1024`` clipped at 0, then / the volume maximum."""
    from edgesr.data.sources import CT_HU_OFFSET

    return IntensitySpec(
        modality="CT",
        normaliser="max",
        hu_offset=CT_HU_OFFSET,
        clip_min=0.0,
        padding_below_hu=-1500.0,  # air is -1000; scanners pad with -2000, -2048 or -3024
    )


def mr_intensity(normaliser: str = "max") -> IntensitySpec:
    return IntensitySpec(modality="MR", normaliser=normaliser)


def sr_spec(
    *, modality: str, scale: int, degradation: str, upsampler: str, receptive_radius: int
) -> ModelSpec:
    intensity = ct_intensity() if modality == "CT" else mr_intensity()
    return ModelSpec(
        task="sr",
        inputs=SR_INPUTS,
        outputs=SR_OUTPUTS,
        intensity=intensity,
        sr=SRSpec(scale, degradation, upsampler, receptive_radius),
    )


def recon_spec(*, coils: int, map_estimation: str = "lowres") -> ModelSpec:
    pairs = f"2*{coils}" if coils else "2C"
    return ModelSpec(
        task="recon",
        inputs=(
            TensorSpec(
                "masked_kspace", 2 * coils, f"undersampled k-space, real/imag pairs, [B, {pairs}, H, W]"
            ),
            TensorSpec("mask", 1, "phase-encode sampling mask (1: acquired), [B, 1, 1, W]"),
            TensorSpec("sens_maps", 2 * coils, f"coil sensitivities, real/imag pairs, [B, {pairs}, H, W]"),
        ),
        outputs=(TensorSpec("image", 2, "coil-combined complex image / reference, [B, 2, H, W]"),),
        intensity=mr_intensity("zero-filled-rss-max"),
        recon=ReconSpec(coils=coils, map_estimation=map_estimation),
    )
