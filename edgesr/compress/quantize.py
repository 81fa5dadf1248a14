"""INT8 post-training quantization per runtime, gated on PSNR/SSIM, with remedies when it misses.

One float model, two INT8 artifacts, because the runtimes want different files:

* **OpenVINO**: NNCF post-training quantization of the OpenVINO model read from the float ONNX
  export; saved as IR (``openvino/model.xml`` + ``.bin``). NNCF's own bias correction is available.
* **ONNX Runtime / TensorRT**: a standard QDQ ONNX (only ``QuantizeLinear``/``DequantizeLinear`` added,
  no custom ops) from ONNX Runtime's static quantizer, per-channel symmetric INT8 weights and
  asymmetric UINT8 activations (``onnxruntime/model.int8.onnx``). NNCF's torch-exported INT8 carries
  OpenVINO's custom ``FakeQuantize`` op, which ONNX Runtime cannot load (DESIGN.md section 5).

Calibration inputs are recorded from the inference pipeline itself on training-split slices, so the
quantizers see exactly the tiles, global skips and intensity mapping that the runtime will see.

Only convolutions are quantized. What stays in floating point is chosen by a :class:`Scope`, resolved
on the exported graph: the convolutions at the network's ends (first layers see the image, last
layers write the residual that is added to the global skip), the sub-pixel upsampler's neighbours,
and anything named by module or pattern. Data consistency, FFTs and the skip additions are never
quantized (they are not convolutions).

The gate: each attempt is scored on the validation split (never the test split, which the report
uses) against the float model, judged on its real scans when a template is among the split's sources
(``gate_on``, as the recipe's own gate; :func:`edgesr.evaluate.gated_scores`). When plain PTQ
misses ``max_psnr_drop_db``/``max_ssim_drop``, the remedies run in the recipe's order, each on top
of the previous: ``keep_fp`` (one more convolution kept in float at each end), ``more_calibration``
(four times the calibration slices), ``bias_correction`` (NNCF's full bias correction; OpenVINO
only), ``qat`` (quantization-aware training with distillation from the float model,
:mod:`edgesr.compress.qat`; trained once, then converted for each runtime). The best attempt is
kept either way and the result says which attempt met the gate, or that none did and the best figures
reached.
"""

from __future__ import annotations

import ast
import gc
import logging
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from edgesr._io import atomic_path, replace_folder, write_json_atomic
from edgesr.compress.distill import DistillSettings
from edgesr.compress.recipe import QUANTIZE_REMEDIES as REMEDIES
from edgesr.compress.recipe import QUANTIZE_RUNTIMES as RUNTIMES
from edgesr.data.dataset import PreparedDataset
from edgesr.errors import ConfigError, EdgesrError
from edgesr.evaluate import (
    gated_scores,
    model_recon_method,
    model_sr_method,
    recon_samples,
    score_predictor,
    sr_pairs,
)
from edgesr.pipeline import Predictor
from edgesr.spec import ModelSpec

ARTIFACTS = {"openvino": "openvino/model.xml", "onnxruntime": "onnxruntime/model.int8.onnx"}
QAT_CHECKPOINT = "qat/run/best"  # in the stage folder: the QAT model's best validation weights


@dataclass(frozen=True)
class Scope:
    """The convolutions kept in floating point (like NNCF's ``IgnoredScope``, resolved on the graph).

    Attributes:
        ends: convolutions kept at each end: those with fewer than ``ends + 1`` convolutions between
            them and a graph input (the first layers) or a graph output (the last layers).
        upsampler: keep the convolutions directly before and after each sub-pixel shuffle.
        modules: torch module names (``blocks.3``, ``to_image``): every convolution inside is kept.
        patterns: regular expressions matched against module names and graph node names.
    """

    ends: int = 1
    upsampler: bool = True
    modules: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()

    def widened(self) -> Scope:
        """The ``keep_fp`` remedy: one more convolution in float at each end."""
        return replace(self, ends=self.ends + 1)

    def resolve(self, graph: Any) -> list[str]:
        """The names of the ``Conv`` nodes of an ONNX graph (``onnx.ModelProto``) this scope keeps."""
        nodes = list(graph.graph.node)
        from_input = _conv_depths(nodes, {i.name for i in graph.graph.input}, forward=True)
        from_output = _conv_depths(nodes, {o.name for o in graph.graph.output}, forward=False)
        near_shuffle = _shuffle_neighbours(nodes) if self.upsampler else set()
        compiled = [re.compile(p) for p in self.patterns]
        kept = []
        for node in nodes:
            if node.op_type != "Conv":
                continue
            modules = module_path(node)
            if (
                from_input.get(node.name, 1 << 30) <= self.ends
                or from_output.get(node.name, 1 << 30) <= self.ends
                or node.name in near_shuffle
                or any(m in modules for m in self.modules)
                or any(p.search(text) for p in compiled for text in (node.name, *modules))
            ):
                kept.append(node.name)
        named = {m for node in nodes if node.op_type == "Conv" for m in module_path(node)}
        unknown = [m for m in self.modules if m not in named]
        if unknown:  # a typo would otherwise keep nothing in float, silently
            raise ConfigError(
                f"stages.keep_fp_modules: no convolution lies in {', '.join(map(repr, unknown))}; "
                f"modules with convolutions: {', '.join(sorted(named)[:12])}"
            )
        return kept


def module_path(node: Any) -> list[str]:
    """The torch module names a node of a dynamo export belongs to (outermost first)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                return [s for s in ast.literal_eval(prop.value) if s]
            except (ValueError, SyntaxError):
                return []
    return []


def _conv_depths(nodes: list[Any], ends: set[str], *, forward: bool) -> dict[str, int]:
    """For each Conv, the fewest Convs (itself included) on a path from a graph input (or to an output).

    ONNX nodes are stored in topological order, so one pass (reversed for outputs) settles every node.
    """
    depth: dict[str, int] = {name: 0 for name in ends}  # tensor name -> Convs passed so far
    ordered = nodes if forward else list(reversed(nodes))
    result: dict[str, int] = {}
    for node in ordered:
        sources, targets = (node.input, node.output) if forward else (node.output, node.input)
        reached = [depth[t] for t in sources if t in depth]
        if not reached:
            continue
        here = min(reached) + (node.op_type == "Conv")
        if node.op_type == "Conv":
            result[node.name] = here
        for tensor in targets:
            if tensor:
                depth[tensor] = min(depth.get(tensor, here), here)
    return result


def _shuffle_neighbours(nodes: list[Any]) -> set[str]:
    """Convs feeding a ``DepthToSpace`` (PixelShuffle) and Convs reading its output."""
    producer = {out: node for node in nodes for out in node.output}
    names = set()
    for node in nodes:
        if node.op_type != "DepthToSpace":
            continue
        source = producer.get(node.input[0])
        if source is not None and source.op_type == "Conv":
            names.add(source.name)
        names |= {n.name for n in nodes if n.op_type == "Conv" and node.output[0] in n.input}
    return names


def default_scope(spec: ModelSpec) -> Scope:
    """The layers each family keeps in float by default.

    SR: the first and last convolutions and the upsampler's neighbours (they carry the image and the
    residual at full resolution, where 8-bit steps show). Recon: the first and last convolutions of
    the unrolled network; data consistency is never quantized.
    """
    return Scope(ends=1, upsampler=spec.sr is not None)


# --- Calibration -------------------------------------------------------------------------------------


class _Recorder:
    """A predictor that records its inputs (as numpy arrays) and answers with zeros of the output's shape.

    Calibration needs only what the pipeline feeds the network; running the float model on every tile
    as well took as long as the calibration itself (53 s of a 2-minute INT8 export of rdn-mr-x2-edge).
    Each tile's answer only fills the pipeline's output image, which calibration throws away.
    """

    def __init__(self, spec: ModelSpec, predictor: Predictor) -> None:
        self.spec = spec
        self.inputs: list[dict[str, np.ndarray]] = []
        self.fixed_lr_size = getattr(
            predictor, "fixed_lr_size", None
        )  # the inputs a fixed-shape export takes

    def __call__(self, inputs: Any) -> torch.Tensor:
        self.inputs.append({k: v.detach().cpu().numpy().astype(np.float32) for k, v in inputs.items()})
        first = inputs[self.spec.input_names[0]]
        batch, height, width = first.shape[0], first.shape[-2], first.shape[-1]
        scale = self.spec.sr.scale if self.spec.sr is not None else 1
        channels = self.spec.outputs[0].channels
        return torch.zeros(batch, channels, height * scale, width * scale)


def calibration_inputs(
    spec: ModelSpec, predictor: Predictor, dataset: PreparedDataset, *, slices: int, split: str = "train"
) -> list[dict[str, np.ndarray]]:
    """The network inputs the pipeline feeds on ``slices`` slices of ``split`` (spread over volumes).

    ``predictor`` gives the tiling (a fixed-shape artifact's input size); it is not run.

    Returns one ``{input name: float32 array}`` per pipeline item (SR: one per tile; recon: per slice).
    """
    if slices < 1:
        raise ConfigError(f"calibration needs at least one slice; got {slices}")
    modality = spec.intensity.modality if spec.sr is not None else "MR"
    volumes = max(1, len(dataset.volumes(modality, split)))
    per_volume = -(-slices // volumes)
    recorder = _Recorder(spec, predictor)
    if spec.sr is not None:
        method = model_sr_method(spec, recorder)
        kind = spec.sr.degradation
        for lr, _, _ in sr_pairs(
            dataset, modality=modality, scale=spec.sr.scale, split=split, degradation=kind,
            max_slices=per_volume,
        ):  # fmt: skip
            method(lr, spec.sr.scale, kind)
    else:
        recon = model_recon_method(spec, recorder)
        coils = spec.recon.coils if spec.recon is not None and spec.recon.coils else 8
        for sample, _ in recon_samples(
            dataset, acceleration=4.0, n_coils=coils, split=split, max_slices=per_volume
        ):  # fmt: skip
            recon(sample.kspace[None], sample.mask.view(1, 1, 1, -1), sample.sens_maps[None])
    return recorder.inputs


# --- The two quantizers --------------------------------------------------------------------------------


def quantize_onnxruntime(
    onnx_path: Path,
    out: Path,
    calibration: Sequence[dict[str, np.ndarray]],
    *,
    keep_fp: Sequence[str],
    symmetric: bool = False,
    float_paths: bool = False,
) -> Path:
    """A standard QDQ ONNX of ``onnx_path``: INT8 convolutions except ``keep_fp``; written atomically.

    ``float_paths`` gives every consumer that is not a quantized convolution the float tensor back (see
    :func:`_float_consumers_read_float`): recon graphs need it, so that their data consistency and the
    image's residual path never compute on 8-bit values.

    ``symmetric`` quantizes activations to signed INT8 with zero point 0, as TensorRT's explicit
    quantization requires; ONNX Runtime's CPU kernels prefer the default (unsigned, asymmetric).

    ONNX Runtime's files get 7-bit weights (``reduce_range``): on x86 CPUs without VNNI (AVX2 only, as
    many console PCs are) its UINT8 x INT8 kernels add pairs of products in 16 bits, which saturate
    with full 8-bit weights. The file cannot know the CPU it will run on. Measured on an AVX2-only EPYC:
    a tiny RDN's INT8 export lost 0.65 dB with 8-bit weights and met its 0.3 dB gate with 7-bit ones;
    rdn-mr-x2-edge's PTQ -0.58 -> -0.53 dB (validation slices). TensorRT's files (GPU kernels) keep 8.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._items, None)

    _require_reachable_convolutions(onnx_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # ONNX Runtime logs (twice, on the root logger) that the model should be pre-processed with its
    # symbolic shape inference first; that inference fails on dynamo exports ("Incomplete symbolic shape
    # inference"), so the advice is dropped here rather than shown to every user.
    advice = _DropMessage("consider to run pre-processing", "consider pre-processing")
    with _root_filter(advice), atomic_path(out) as tmp:
        quantize_static(
            str(onnx_path), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            reduce_range=not symmetric,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv"],
            extra_options={
                "CalibMovingAverage": True, "ActivationSymmetric": symmetric, "WeightSymmetric": True,
            },
            nodes_to_exclude=list(keep_fp), calibrate_method=CalibrationMethod.MinMax,
        )  # fmt: skip
        if float_paths:
            _float_consumers_read_float(tmp)
        _require_quantized(tmp, keep_fp)
    return out


def _float_consumers_read_float(path: Path) -> int:
    """Rewires the float readers of quantized activations to the float tensor; returns how many.

    ONNX Runtime's QDQ quantizer inserts one QuantizeLinear/DequantizeLinear pair on a quantized
    convolution's input and hands the dequantized copy to *every* reader of that tensor, also where a
    float operation made it (its ``DedicatedQDQPair`` option splits only between several quantized
    readers). In a recon graph that tensor can be the image itself: with a MoDL unroll's first
    convolution quantized, its residual add and its data-consistency solve read the image in 8 bits.
    Rewired, they read it in float, as NNCF places its quantizers (on the convolution's input only),
    whatever the scope. A quantized convolution's own output keeps its shared pair: its readers take
    the INT8 result, and ONNX Runtime fuses a convolution into ``QLinearConv`` only while its
    QuantizeLinear is its sole reader (rewiring those too ran every convolution of ``modl-r4`` in
    float, and ``rdn-mr-x2`` 2.1x slower). Not handled (no edgesr graph has one): a quantized tensor
    that is also a graph output, which ORT's quantizer renames so that the output is the 8-bit copy.
    SR graphs keep ONNX Runtime's placement: rewired this way,
    ``rdn-mr-x2``'s INT8 file lost 0.036 dB instead of 0.040 at the same speed (143 against 152 ms,
    interleaved), not worth changing the files the shipped cards measured.

    Measured 2026-12-01 (AVX2 EPYC): ``modl-r4``'s default scopes keep each unroll's first convolution
    in float, so its export is unchanged by this (-0.171 dB, -0.0280 SSIM on the test slices, still
    refused by the gate: the 8-bit error of the denoisers' middle layers); a tiny MoDL with every
    convolution quantized moves towards the float model (``tests/compress/quantize_cases.py``).
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    nodes = list(model.graph.node)
    producer = {name: node for node in nodes for name in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    dequantized = {node.output[0] for node in nodes if node.op_type == "DequantizeLinear"}
    # A quantized convolution reads its weight through a DequantizeLinear; one kept in float does not,
    # and is a float reader like any other.
    quantized_convs = {
        id(node) for node in nodes
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in dequantized
    }  # fmt: skip
    rewired = 0
    for dequantize in nodes:
        quantize = producer.get(dequantize.input[0]) if dequantize.op_type == "DequantizeLinear" else None
        if quantize is None or quantize.op_type != "QuantizeLinear":
            continue  # a weight's pair (its QuantizeLinear folded into an initializer), or not a pair
        source = producer.get(quantize.input[0])
        if source is not None and id(source) in quantized_convs:
            # A quantized convolution's own output: its readers take the INT8 result, and ONNX Runtime
            # fuses the convolution into QLinearConv only while its QuantizeLinear is its sole reader.
            continue
        for node in consumers.get(dequantize.output[0], []):
            if id(node) in quantized_convs:
                continue
            for index, name in enumerate(node.input):
                if name == dequantize.output[0]:
                    node.input[index] = quantize.input[0]
                    rewired += 1
    onnx.save(model, str(path))
    return rewired


def _require_reachable_convolutions(onnx_path: Path) -> None:
    """Refuses a graph with convolutions inside ``Loop`` bodies: neither quantizer reaches them, and the
    file would be labelled INT8 while running them in float (what MoDL's Loop export gave before its
    INT8 export wrote the unrolls out: :func:`edgesr.export.onnx.int8_unroll`)."""
    import onnx

    from edgesr.export.onnx import convolutions_in_subgraphs

    inside = convolutions_in_subgraphs(onnx.load(str(onnx_path), load_external_data=False))
    if inside:
        raise EdgesrError(
            f"{onnx_path}: {inside} convolution(s) lie inside ONNX Loop bodies, which the INT8 quantizers "
            "do not reach (they would stay float in a file labelled INT8); export the loops written out "
            "(edgesr.export.onnx.export_onnx(..., unroll=...))"
        )


def _require_quantized(path: Path, keep_fp: Sequence[str]) -> None:
    """Refuses a QDQ file in which no convolution that was to be quantized got its QDQ pair."""
    import onnx

    nodes = list(onnx.load(str(path), load_external_data=False).graph.node)
    dequantized = {node.output[0] for node in nodes if node.op_type == "DequantizeLinear"}
    convs = [node for node in nodes if node.op_type == "Conv" and node.name not in set(keep_fp)]
    if convs and not any(len(node.input) > 1 and node.input[1] in dequantized for node in convs):
        raise EdgesrError(
            f"ONNX Runtime's quantizer quantized none of the {len(convs)} convolutions to be INT8 in {path}"
        )


class _DropMessage(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(f in record.getMessage() for f in self.fragments)


@contextmanager
def _root_filter(log_filter: logging.Filter) -> Iterator[None]:
    logging.getLogger().addFilter(log_filter)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(log_filter)


def quantize_openvino(
    onnx_path: Path,
    calibration: Sequence[dict[str, np.ndarray]],
    *,
    keep_fp: Sequence[str],
    bias_correction: bool = False,
) -> Any:
    """NNCF PTQ of the OpenVINO model read from ``onnx_path``: an ``openvino.Model`` with INT8 convs.

    ``keep_fp`` are ONNX node names; OpenVINO names a convolution ``<name>/WithoutBiases`` and its bias
    addition ``<name>``, so both are ignored. ``bias_correction`` selects NNCF's full bias correction
    instead of its fast variant.
    """
    import nncf

    nncf.set_log_level(logging.WARNING)  # NNCF prints its ignored-node tables at INFO
    from edgesr.export.openvino import read_onnx

    _require_reachable_convolutions(onnx_path)
    model = read_onnx(onnx_path)
    patterns = [rf"^{re.escape(name)}(/WithoutBiases)?$" for name in keep_fp]
    # Only convolutions are quantized (as in the ONNX Runtime artifact): the residual and skip
    # additions and any data consistency stay in float.
    other_types = sorted({op.get_type_name() for op in model.get_ordered_ops()} - {"Convolution"})
    quantized = nncf.quantize(
        model, nncf.Dataset(list(calibration)), subset_size=len(calibration),
        fast_bias_correction=not bias_correction,
        ignored_scope=nncf.IgnoredScope(patterns=patterns, types=other_types, validate=False),
    )  # fmt: skip
    # NNCF's statistics pass leaves compiled OpenVINO models in reference cycles. Freed by the cyclic
    # collector at some later moment, their destructors crashed the test suite (a segfault near its
    # end, after other libraries had started and stopped threads); freeing them here, where they were
    # made, keeps their end deterministic.
    gc.collect()
    return quantized


# --- The gated stage --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class QuantizeSettings:
    """The quantize stage's options.

    Attributes:
        runtimes: which INT8 artifacts to build: ``openvino``, ``onnxruntime`` (TensorRT reads the
            ONNX Runtime QDQ file).
        calibration_slices: training-split slices whose pipeline inputs calibrate the ranges.
        scope: the convolutions kept in float to begin with.
        remedies: tried in order, each on top of the previous, while the gate is missed.
        max_psnr_drop_db, max_ssim_drop: the stage's gate, against its float model, on ``val_split``.
        val_split, val_slices: where attempts are scored (slices per volume; 0: all).
        gate_on: ``real_scans``: the gate is judged on the split's real scans, a template's slices left
            out (as the recipe's gate, :func:`edgesr.compress.report._gate`); ``all``: every slice.
    """

    runtimes: tuple[str, ...] = RUNTIMES
    calibration_slices: int = 16
    scope: Scope = field(default_factory=Scope)
    remedies: tuple[str, ...] = REMEDIES
    max_psnr_drop_db: float = 0.15
    max_ssim_drop: float = 0.003
    val_split: str = "val"
    val_slices: int = 4
    gate_on: str = "real_scans"


@dataclass(frozen=True)
class QatPlan:
    """What the ``qat`` remedy trains: the float torch model (also its distillation teacher), how it
    is rebuilt from checkpoints, and the fine-tuning's options."""

    model: nn.Module
    model_name: str
    model_options: dict[str, Any]
    settings: DistillSettings


@dataclass
class Attempt:
    remedy: str
    keep_fp: list[str]
    calibration_slices: int
    bias_correction: bool
    psnr: float
    ssim: float
    psnr_drop_db: float
    ssim_drop: float
    met_gate: bool
    # QAT files are converted from the fake-quantized torch model: their largest output difference
    # from it on a calibration input (the export check).
    export_max_abs_error: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def quantize(
    onnx_path: Path,
    float_predictor: Predictor,
    *,
    spec: ModelSpec,
    dataset: PreparedDataset,
    settings: QuantizeSettings,
    out: Path,
    threads: int = 0,
    qat: QatPlan | None = None,
    resume: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Builds each runtime's INT8 artifact from the float ONNX ``onnx_path``, gated against the float model.

    Args:
        onnx_path: the float model exported by :func:`edgesr.export.onnx.export_onnx`.
        float_predictor: the float model (the torch module) as a predictor: the gate's reference, and
            the model that answers while calibration inputs are recorded.
        spec: the model's contract.
        dataset: the prepared data (training split for calibration, ``settings.val_split`` for the gate).
        settings: the stage's options.
        out: the stage folder; artifacts go to ``openvino/`` and ``onnxruntime/``.
        threads: runtime threads for scoring attempts (0: the runtime's default).
        qat: the float torch model and fine-tuning options, needed when ``qat`` is among the remedies.
        resume: continue an interrupted QAT fine-tuning in ``out/qat/run``.

    Returns:
        ``{"reference": {psnr, ssim, by_source, gated}, "gate": {..., scored_on}, "runtimes": {runtime:
        {artifact, met_gate, chosen, attempts, unavailable}}}``, also written as
        ``out/quantization.json``. An attempt's ``psnr``/``ssim`` are over every slice; its drops and
        ``met_gate`` are judged on what ``gate.scored_on`` says (:func:`edgesr.evaluate.gated_scores`).
        ``unavailable`` lists remedies that could not produce a file for the runtime, with the reason.
    """
    from edgesr.export.onnxruntime import OnnxRuntimePredictor
    from edgesr.export.openvino import OpenVinoPredictor

    console = console or Console(stderr=True)
    unknown = [r for r in settings.runtimes if r not in RUNTIMES]
    if unknown or not settings.runtimes:
        raise ConfigError(f"quantize runtimes must be among {', '.join(RUNTIMES)}; got {settings.runtimes}")
    if "qat" in settings.remedies and qat is None:
        raise ConfigError("quantize: the qat remedy needs the float torch model and its training options")

    def scored(predictor: Predictor) -> dict[str, Any]:
        score = score_predictor(
            spec, predictor, dataset, split=settings.val_split, max_slices=settings.val_slices
        )
        return score | {"gated": gated_scores(score, settings.gate_on)}

    with console.status(f"scoring the float model on the {settings.val_split} split"):
        reference = scored(float_predictor)
    calibrations: dict[int, list[dict[str, np.ndarray]]] = {}

    def calibration(slices: int) -> list[dict[str, np.ndarray]]:
        if slices not in calibrations:
            with console.status(f"recording calibration inputs from {slices} training slices"):
                calibrations[slices] = calibration_inputs(spec, float_predictor, dataset, slices=slices)
        return calibrations[slices]

    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False)
    trained: dict[tuple[tuple[str, ...], int], nn.Module] = {}

    def fake_quantized(keep_fp: list[str], slices: int) -> nn.Module:
        """The QAT model for this scope and calibration, trained once and shared by the runtimes."""
        from edgesr.compress import qat as qat_steps

        assert qat is not None  # noqa: S101 (checked above)
        key = (tuple(keep_fp), slices)
        if key not in trained:
            items = [qat_steps.torch_inputs(spec, item) for item in calibration(slices)]
            keep_modules = qat_steps.kept_modules(qat.model, graph, keep_fp)
            with console.status("QAT: inserting fake quantizers (NNCF) and calibrating them"):
                model = qat_steps.quantize_torch(qat.model, items, keep_fp=keep_modules)
            trained[key] = qat_steps.finetune(
                model, qat.model, spec=spec, model_name=qat.model_name, model_options=qat.model_options,
                dataset=dataset, settings=qat.settings, out=out / Path(QAT_CHECKPOINT).parent, resume=resume,
                console=console,
            )  # fmt: skip
        return trained[key]

    results: dict[str, Any] = {}
    for runtime in settings.runtimes:
        attempts: list[Attempt] = []
        artifacts: list[Any] = []
        unavailable: list[dict[str, str]] = []
        scope, slices, bias = settings.scope, settings.calibration_slices, False
        plan = [("ptq", scope, slices, bias)]
        for remedy in settings.remedies:
            if remedy == "keep_fp":
                scope = scope.widened()
            elif remedy == "more_calibration":
                slices *= 4
            elif remedy == "bias_correction":
                if runtime != "openvino":  # ONNX Runtime's quantizer has no bias correction
                    continue
                bias = True
            plan.append((remedy, scope, slices, bias))
        for remedy, scope, slices, bias in plan:
            keep_fp = scope.resolve(graph)
            artifact: Any
            predictor: Predictor
            export_error: float | None = None
            if remedy == "qat":
                built = _qat_artifact(
                    runtime, partial(fake_quantized, keep_fp, slices), spec, calibration(slices)[0],
                    out / "attempts" / f"{len(attempts)}-qat.int8.onnx", threads,
                )  # fmt: skip
                if isinstance(built, str):
                    console.print(f"  {runtime} INT8 qat: not available ({built})")
                    unavailable.append({"remedy": remedy, "reason": built})
                    continue
                artifact, predictor, export_error = built
            elif runtime == "openvino":
                with console.status(f"openvino INT8 ({remedy}): quantizing, {len(keep_fp)} kept in float"):
                    artifact = quantize_openvino(
                        onnx_path, calibration(slices), keep_fp=keep_fp, bias_correction=bias
                    )
                predictor = OpenVinoPredictor(artifact, threads=threads)
            else:
                candidate = out / "attempts" / f"{len(attempts)}-{remedy}.int8.onnx"
                with console.status(f"onnxruntime INT8 ({remedy}): quantizing, {len(keep_fp)} kept in float"):
                    artifact = quantize_onnxruntime(
                        onnx_path, candidate, calibration(slices), keep_fp=keep_fp,
                        float_paths=spec.task == "recon",
                    )  # fmt: skip
                predictor = OnnxRuntimePredictor(artifact, threads=threads)
            with console.status(f"{runtime} INT8 ({remedy}): scoring on the {settings.val_split} split"):
                score = scored(predictor)
            gated, gated_reference = score["gated"], reference["gated"]
            drop, ssim_drop = gated_reference["psnr"] - gated["psnr"], gated_reference["ssim"] - gated["ssim"]
            met = drop <= settings.max_psnr_drop_db and ssim_drop <= settings.max_ssim_drop
            attempts.append(
                Attempt(
                    remedy,
                    keep_fp,
                    slices,
                    bias,
                    score["psnr"],
                    score["ssim"],
                    round(drop, 3),
                    round(ssim_drop, 4),
                    met,
                    export_error,
                )  # fmt: skip
            )
            on = " on real scans" if gated["scored_on"] == "real_scans" else ""
            console.print(
                f"  {runtime} INT8 {remedy}: {score['psnr']:.2f} dB / {score['ssim']:.4f} "
                f"({-drop:+.3f} dB, {-ssim_drop:+.4f} SSIM vs float{on}) "
                f"{'meets' if met else 'misses'} the gate"
            )
            artifacts.append(artifact)
            if met:
                break
        # The loop stops at the first attempt that meets the gate (the least kept in float); when none
        # does, the best one is kept and reported as missing.
        chosen = max(range(len(attempts)), key=lambda i: (attempts[i].met_gate, -attempts[i].psnr_drop_db))
        path = out / ARTIFACTS[runtime]
        _save_artifact(runtime, artifacts[chosen], path)
        results[runtime] = {
            "artifact": ARTIFACTS[runtime],  # relative to the stage folder (a run may be moved)
            "met_gate": attempts[chosen].met_gate,
            "chosen": chosen,
            "attempts": [a.as_dict() for a in attempts],
            "unavailable": unavailable,
        }
        if attempts[chosen].remedy == "qat":
            # The trained weights and quantizer scales: a model card ships them, so the INT8 file can
            # be rebuilt without training again (edgesr.export.build.int8_plan).
            results[runtime]["qat_checkpoint"] = QAT_CHECKPOINT
    shutil.rmtree(out / "attempts", ignore_errors=True)
    del artifacts, predictor
    gc.collect()  # the attempts' compiled models and sessions, now rather than at an arbitrary later moment
    summary = {
        "reference": reference,
        "gate": {"max_psnr_drop_db": settings.max_psnr_drop_db, "max_ssim_drop": settings.max_ssim_drop,
                 "split": settings.val_split, "slices_per_volume": settings.val_slices,
                 "scored_on": reference["gated"]["scored_on"]},
        "runtimes": results,
    }  # fmt: skip
    write_json_atomic(out / "quantization.json", summary)
    return summary


def _qat_artifact(
    runtime: str,
    trained: Callable[[], nn.Module],
    spec: ModelSpec,
    example_item: dict[str, np.ndarray],
    onnx_path: Path,
    threads: int,
) -> tuple[Any, Predictor, float] | str:
    """The runtime's file from the QAT model, its predictor and export error; or why there is none."""
    from edgesr.compress import qat as qat_steps
    from edgesr.export.onnxruntime import OnnxRuntimePredictor
    from edgesr.export.openvino import OpenVinoPredictor

    if runtime == "onnxruntime" and spec.recon is not None:
        return "its QDQ file needs the TorchScript ONNX exporter, which cannot export recon models' FFTs"
    try:
        model = trained()
    except qat_steps.QatUnavailable as exc:
        return str(exc)
    example = qat_steps.torch_inputs(spec, example_item)
    predictor: Predictor
    if runtime == "openvino":
        artifact: Any = qat_steps.to_openvino(model, example)
        predictor = OpenVinoPredictor(artifact, threads=threads)
    else:
        artifact = qat_steps.to_qdq_onnx(model, spec, example, onnx_path)
        predictor = OnnxRuntimePredictor(artifact, threads=threads)
    return artifact, predictor, qat_steps.largest_difference(model, predictor, spec, example)


def _save_artifact(runtime: str, artifact: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if runtime == "onnxruntime":
        shutil.copyfile(artifact, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
        return
    import openvino

    # The IR is two files (graph and weights), which no single rename can replace together: they are
    # written into a staging folder that then takes the place of the runtime's folder as a whole.
    staging = path.parent.with_name(path.parent.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    openvino.save_model(artifact, str(staging / path.name), compress_to_fp16=False)
    replace_folder(staging, path.parent)


__all__ = [
    "ARTIFACTS",
    "REMEDIES",
    "RUNTIMES",
    "QatPlan",
    "QuantizeSettings",
    "Scope",
    "calibration_inputs",
    "default_scope",
    "quantize",
    "quantize_onnxruntime",
    "quantize_openvino",
]
