"""Roofline estimates of an artifact's latency on a device that is not here (``bench ... estimate=true``).

A device that is not present is never "measured" (:func:`edgesr.bench.devices.check_present`). What can
be said about it without running there is a roofline bound: every operation of the artifact's graph
takes at least its multiply-accumulates divided by the device's peak MAC rate at the precision it runs
in, and at least the bytes it moves divided by the device's peak memory bandwidth. The sum over the
operations is a lower bound on the latency, not a prediction: real runtimes reach a fraction of the
peak (narrow layers leave matrix units idle, kernels launch, caches miss); it is a bound only as far as
the peak figures are true peaks and the bytes really travel to memory (activations that stay in cache,
concatenations a runtime writes in place, make it optimistic). How large the gap is
was measured on the devices that are present (``benchmarks/roofline_error.py`` writes
``devices/roofline_error.json``), and every estimate carries that record, so a reader sees "at least X
ms; on the CPUs measured here the real p50 was 3-9 times the bound". No estimate is made before the
error has been measured (:class:`EstimatorNotCalibrated`).

The cost model, per operation of the graph (read with OpenVINO's frontends, which read ONNX and IR
alike, at the profile's input size; ``Loop`` bodies counted once per iteration):

* **compute**: convolutions (plain, grouped, transposed), matrix products and FFTs (DFT ops, counted as
  2.5 N log2 N real MACs per complex transform of length N, on the device's FP32 vector peak);
  a convolution or product whose activation input is quantized (``FakeQuantize``, or an 8-bit tensor
  behind a dequantisation) runs at the INT8 peak, the others at the float precision the artifact
  executes in;
* **memory**: the activations a compute op reads and writes plus its weights; data-movement ops
  (concatenation, pixel shuffle, transposes, padding, interpolation, gathers, conversions) read and write
  their tensors; element-wise ops fed by a compute op are taken as fused into it (the runtimes do) and
  cost nothing, other element-wise ops read their inputs and write their output. Shape arithmetic
  (ops on tensors of fewer than 1024 elements) is left out, and so is (de)quantisation (``FakeQuantize``,
  QDQ pairs), which the runtimes fold into the convolutions around it.

Written by hand: no library here gives per-operation MACs and bytes for both ONNX and OpenVINO IR files
with ONNX ``Loop`` bodies counted per iteration (ONNX tools count one static graph; OpenVINO's benchmark
app measures, it does not estimate).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgesr.bench.devices import DEVICES_DIR, DeviceProfile, PeakFigures
from edgesr.device import cpu_has_native_bf16
from edgesr.errors import ConfigError, EdgesrError

ERROR_RECORD = DEVICES_DIR / "roofline_error.json"
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}
COMPUTE_OPS = (
    "Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData", "MatMul",
)  # fmt: skip
SUBGRAPH_OPS = ("If",)  # bodies that run or not by data: not countable
FFT_OPS = ("DFT", "IDFT", "RDFT", "IRDFT")
MOVEMENT_OPS = (
    "Concat", "DepthToSpace", "SpaceToDepth", "Transpose", "Pad", "Interpolate", "Gather", "Convert",
    "StridedSlice", "Slice", "Split", "VariadicSplit", "Tile", "Broadcast", "ReduceSum", "ReduceMean",
)  # fmt: skip
FREE_OPS = ("Parameter", "Constant", "Result", "ShapeOf", "Reshape", "Squeeze", "Unsqueeze")
SMALL = 1024  # tensors below this many elements are shape arithmetic, not data
QUANTIZED_TYPES = ("i8", "u8")
QUANTIZATION_OPS = ("FakeQuantize", "QuantizeLinear", "DequantizeLinear")
DEQUANTIZATION_CHAIN = ("Convert", "Subtract", "Multiply")


class EstimatorNotCalibrated(EdgesrError):
    """No measured record of the estimator's error on the devices that are present."""


@dataclass(frozen=True)
class Peaks:
    """A device's peak rates: MACs per second (giga) by precision, memory bandwidth (GB/s), and where
    the figures come from."""

    gmacs: Mapping[str, float]
    memory_gb_s: float
    source: str

    def rate(self, precision: str) -> float:
        rate = float(self.gmacs.get(precision, 0.0))
        if precision == "fp32_vector" and rate <= 0:  # no separate vector figure: the FP32 one
            rate = float(self.gmacs.get("fp32", 0.0))
        if rate <= 0:
            key = "fp32" if precision == "fp32_vector" else precision
            raise ConfigError(f"the device profile gives no peak.{key}_gmacs ({self.source})")
        return rate * 1e9


@dataclass
class OpCost:
    """One operation's share of the estimate (``times`` > 1 inside a ``Loop``)."""

    name: str
    kind: str
    precision: str
    macs: float
    bytes: float
    times: int = 1
    seconds: float = 0.0
    bound: str = "memory"


@dataclass
class Estimate:
    """The costed operations of a graph, the input shapes they were counted at, and the operations
    that could not be counted (named, never silently zero)."""

    ops: list[OpCost] = field(default_factory=list)
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    uncounted: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.seconds_of(lambda op: True)

    @property
    def macs(self) -> float:
        return sum(op.macs * op.times for op in self.ops)

    @property
    def bytes(self) -> float:
        return sum(op.bytes * op.times for op in self.ops)

    def seconds_of(self, keep: Callable[[OpCost], bool]) -> float:
        """The time of the operations ``keep`` selects (each as often as it runs)."""
        return sum(op.seconds * op.times for op in self.ops if keep(op))


# --- peaks of the CPU this runs on ---------------------------------------------------------------


def cpu_peaks(threads: int) -> Peaks:
    """Peak MAC rates of ``threads`` cores of this machine's CPU, from its instruction set and clock,
    and its memory bandwidth as a copy measured here (a CPU's published bandwidth is the socket's).

    MACs per cycle and core, by the vendors' documentation of the units: AVX-512 with two FMA ports 32
    FP32 (AVX2: 16); AMX 512 BF16 and 1024 INT8 (one tile multiply per cycle), else AVX-512 BF16 64 and
    AVX-512 VNNI 128 INT8 (AVX-VNNI: 64). The clock is the higher of the reported one and the one an
    FP32 matrix product reaches here (a virtual machine reports its base clock; the cores turbo above
    it): a peak that a measured run exceeds would not bound anything.
    """
    flags, reported_mhz = _cpu_flags_and_mhz()
    if "avx512f" in flags:
        fp32 = 32.0
    elif "fma" in flags or "avx2" in flags:
        fp32 = 16.0
    else:
        fp32 = 8.0
    bf16 = 512.0 if "amx_bf16" in flags else 64.0 if "avx512_bf16" in flags else fp32
    if "amx_int8" in flags:
        int8 = 1024.0
    elif "avx512_vnni" in flags:
        int8 = 128.0
    elif "avx_vnni" in flags:
        int8 = 64.0
    else:
        int8 = fp32 * 2
    cores = max(threads, 1)
    achieved = measure_fp32_gmacs(cores)
    mhz = max(reported_mhz, achieved / (fp32 * cores) * 1000.0)
    giga = cores * mhz / 1000.0
    wide = ("avx512f", "amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni")
    units = "+".join(f for f in wide if f in flags)
    bandwidth = measure_copy_bandwidth(cores)
    gmacs = {"fp32": fp32 * giga, "bf16": bf16 * giga, "fp16": fp32 * giga, "int8": int8 * giga}
    return Peaks(
        gmacs=gmacs | {"fp32_vector": gmacs["fp32"]},
        memory_gb_s=bandwidth,
        source=f"this CPU: {units or 'no wide vector units'} x {cores} cores at {mhz:.0f} MHz (reported "
        f"{reported_mhz:.0f}; an FP32 matrix product reached {achieved:.0f} GMAC/s here); memory: a copy "
        f"measured here with {cores} threads, {bandwidth:.1f} GB/s",
    )


def _cpu_flags_and_mhz() -> tuple[set[str], float]:
    flags: set[str] = set()
    mhz = 0.0
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the CPU's features (/proc/cpuinfo): {exc}") from None
    if match := re.search(r"^flags\s*:\s*(.*)$", text, re.MULTILINE):
        flags = set(match.group(1).split())
    try:  # the highest clock the cores run at, where the kernel says it; else what cpuinfo reports
        mhz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1000.0
    except (OSError, ValueError):
        if match := re.search(r"^cpu MHz\s*:\s*([\d.]+)", text, re.MULTILINE):
            mhz = float(match.group(1))
    if mhz <= 0:
        raise ConfigError("cannot read the CPU's clock (/proc/cpuinfo has no 'cpu MHz')")
    return flags, mhz


def measure_copy_bandwidth(threads: int, megabytes: int = 256, repeats: int = 5) -> float:
    """GB/s of a large array copy (read + write) on ``threads`` threads, best of ``repeats``."""
    import torch

    with _torch_threads(threads):
        source = torch.ones(megabytes * 2**20 // 4)
        target = torch.empty_like(source)
        best = math.inf
        for _ in range(repeats):
            started = time.perf_counter()
            target.copy_(source)
            best = min(best, time.perf_counter() - started)
    return 2 * source.numel() * 4 / best / 1e9


def measure_fp32_gmacs(threads: int, size: int = 1024, repeats: int = 5) -> float:
    """GMAC/s of an FP32 matrix product on ``threads`` threads, best of ``repeats`` (oneDNN / MKL reach
    most of the FMA units' peak on it): what the clock must at least be."""
    import torch

    with _torch_threads(threads):
        a, b = torch.rand(size, size), torch.rand(size, size)
        torch.mm(a, b)
        best = math.inf
        for _ in range(repeats):
            started = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - started)
    return size**3 / best / 1e9


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- the graph ----------------------------------------------------------------------------------


def graph_file(folder: Path, entry: str, files: Mapping[str, str]) -> Path:
    """The file of an artifact whose graph is counted: its entry when OpenVINO reads it (ONNX, IR),
    else the ONNX it was built from (a TensorRT plan is opaque)."""
    if entry.endswith((".onnx", ".xml")):
        return folder / entry
    onnx = [name for name in files if name.endswith(".onnx")]
    if not onnx:
        raise ConfigError(f"{folder}: no ONNX or OpenVINO IR file to count the operations of")
    return folder / onnx[0]


def estimate_graph(
    path: Path,
    input_shapes: Mapping[str, tuple[int, ...]],
    peaks: Peaks,
    *,
    float_precision: str,
) -> Estimate:
    """Per-operation roofline of the graph in ``path`` (ONNX or OpenVINO IR) at ``input_shapes``.

    Args:
        path: the graph file.
        input_shapes: a shape for every input the file leaves dynamic (fixed inputs keep theirs).
        peaks: the device's peak rates.
        float_precision: what the device runs the float operations in (``fp32``, ``bf16``, ``fp16``).

    Raises:
        ConfigError: a shape cannot be set, or a ``Loop`` whose iteration count cannot be read.
    """
    import openvino as ov

    if float_precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"float_precision must be fp32, bf16 or fp16; got {float_precision!r}")
    try:
        model = ov.Core().read_model(str(path))
    except Exception as exc:  # a corrupt or unsupported file: OpenVINO's own message, with the path
        raise ConfigError(f"{path}: OpenVINO cannot read the graph: {exc}") from None
    shapes: dict[str, Any] = {}
    for port in model.inputs:
        name = port.get_any_name()
        if port.get_partial_shape().is_static:
            continue
        if name not in input_shapes:
            raise ConfigError(f"{path}: input {name!r} has a dynamic shape and none was given for it")
        shapes[name] = list(input_shapes[name])
    if shapes:
        try:
            model.reshape(shapes)
        except Exception as exc:  # OpenVINO's shape inference refuses the size
            raise ConfigError(f"{path}: cannot set the input shapes {shapes}: {exc}") from None
    estimate = Estimate(input_shapes={
        port.get_any_name(): [int(d) for d in port.get_partial_shape().to_shape()] for port in model.inputs
    })  # fmt: skip
    estimate.ops.extend(
        _walk(
            model, peaks, float_precision, times=1, where=str(path), fused=set(), skipped=estimate.uncounted
        )
    )
    if estimate.seconds <= 0:
        raise ConfigError(
            f"{path}: no operation could be counted (uncounted: {estimate.uncounted or 'none'})"
        )
    return estimate


def _walk(
    model: Any,
    peaks: Peaks,
    float_precision: str,
    *,
    times: int,
    where: str,
    fused: set[str],
    skipped: list[str],
) -> Iterator[OpCost]:
    """The costs of ``model``'s operations; ``fused`` collects the element-wise ops taken as fused
    into a compute op (so that a chain conv -> bias -> ReLU is one op); ``skipped`` the ops whose cost
    cannot be known (a dynamic shape, a data-dependent branch)."""
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind in ("Loop", "TensorIterator"):
            count = _loop_count(op, where)
            body = op.get_function()
            yield from _walk(
                body, peaks, float_precision, times=times * count, where=where, fused=fused, skipped=skipped
            )
            continue
        if kind in SUBGRAPH_OPS:
            skipped.append(f"{kind} {op.get_friendly_name()}")
            continue
        cost = _op_cost(op, kind, peaks, float_precision, fused, skipped)
        if cost is not None:
            cost.times = times
            yield cost


def _op_cost(
    op: Any, kind: str, peaks: Peaks, float_precision: str, fused: set[str], skipped: list[str]
) -> OpCost | None:
    if kind in FREE_OPS:
        return None
    out_elements = _elements(op.get_output_partial_shape(0)) if op.get_output_size() else 0
    if out_elements is None:
        if kind in COMPUTE_OPS or kind in FFT_OPS:
            skipped.append(f"{kind} {op.get_friendly_name()} (dynamic shape)")
        return None
    if out_elements < SMALL and kind not in COMPUTE_OPS:
        return None
    inputs = [op.input_value(k) for k in range(op.get_input_size())]
    name = op.get_friendly_name()
    if kind in QUANTIZATION_OPS or kind in DEQUANTIZATION_CHAIN and _quantized(op):
        fused.add(op.get_name())  # (de)quantisation: folded into the convolutions around it
        return None
    if kind in COMPUTE_OPS:
        precision = "int8" if _quantized(inputs[0].get_node()) else float_precision
        macs = _macs(op, kind, inputs)
        width = BYTES[precision]
        moved = (_elements(inputs[0].get_partial_shape()) or 0) * width
        moved += (_elements(inputs[1].get_partial_shape()) or 0) * width
        moved += out_elements * BYTES[float_precision]
        return _timed(OpCost(name, kind, precision, macs, moved), peaks)
    if kind in FFT_OPS:
        shape = _static(inputs[0].get_partial_shape())
        axes = _constant(inputs[1].get_node())
        if shape is None or axes is None:
            skipped.append(f"{kind} {name} (axes not constant)")
            return None
        complex_elements = math.prod(shape[:-1])  # the last axis holds real and imaginary parts
        logs = sum(math.log2(max(shape[int(a) % (len(shape) - 1)], 2)) for a in np.ravel(axes))
        macs = 2.5 * complex_elements * logs
        moved = 2 * complex_elements * 2 * BYTES["fp32"]
        return _timed(OpCost(name, kind, "fp32_vector", macs, moved), peaks)
    width = BYTES[float_precision]
    if kind in MOVEMENT_OPS:
        read = sum(_elements(i.get_partial_shape()) or 0 for i in inputs if not _is_constant(i.get_node()))
        return _timed(OpCost(name, kind, float_precision, 0.0, (read + out_elements) * width), peaks)
    # element-wise and the rest: fused into a compute op that feeds it (directly or through other
    # fused element-wise ops), else read and written
    producers = [i.get_node() for i in inputs if not _is_constant(i.get_node())]
    if any(p.get_type_name() in COMPUTE_OPS or p.get_name() in fused for p in producers):
        fused.add(op.get_name())
        return None
    read = sum(_elements(i.get_partial_shape()) or 0 for i in inputs if not _is_constant(i.get_node()))
    return _timed(OpCost(name, kind, float_precision, 0.0, (read + out_elements) * width), peaks)


def _timed(cost: OpCost, peaks: Peaks) -> OpCost:
    compute = cost.macs / peaks.rate(cost.precision) if cost.macs else 0.0
    memory = cost.bytes / (peaks.memory_gb_s * 1e9)
    cost.seconds = max(compute, memory)
    cost.bound = "compute" if compute >= memory else "memory"
    return cost


def _macs(op: Any, kind: str, inputs: list[Any]) -> float:
    out = _static(op.get_output_partial_shape(0)) or ()
    weights = _static(inputs[1].get_partial_shape()) or ()
    if kind == "Convolution":  # weights [C_out, C_in, *kernel]
        return math.prod(out) * math.prod(weights[1:])
    if kind == "GroupConvolution":  # weights [groups, C_out/g, C_in/g, *kernel]
        return math.prod(out) * math.prod(weights[2:])
    if kind == "ConvolutionBackpropData":  # weights [C_in, C_out, *kernel]: per input pixel
        data = _static(inputs[0].get_partial_shape()) or ()
        return math.prod(data) * math.prod(weights[1:])
    if kind == "GroupConvolutionBackpropData":  # weights [groups, C_in/g, C_out/g, *kernel]
        data = _static(inputs[0].get_partial_shape()) or ()
        return math.prod(data) * math.prod(weights[2:])
    # MatMul: output elements x the contracted length
    a = _static(inputs[0].get_partial_shape()) or (1,)
    transpose_a = bool(op.get_attributes().get("transpose_a", False))
    inner = a[-2] if transpose_a and len(a) > 1 else a[-1]
    return math.prod(out) * inner


def _quantized(node: Any, depth: int = 0) -> bool:
    """Whether an activation reaches a compute op through quantisation (FakeQuantize, or an 8-bit
    tensor behind a dequantisation)."""
    kind = node.get_type_name()
    if kind == "FakeQuantize":
        return True
    if kind in QUANTIZATION_OPS or node.get_output_element_type(0).get_type_name() in QUANTIZED_TYPES:
        return True
    if depth >= 4 or kind not in ("Convert", "Multiply", "Subtract", "Reshape", "Transpose"):
        return False
    return any(_quantized(node.input_value(k).get_node(), depth + 1) for k in range(node.get_input_size()))


def _loop_count(op: Any, where: str) -> int:
    """How many times a ``Loop`` runs: its trip count when constant, else the counter pattern that
    ``fixed_count_loop`` exports (``step + 1 < N``, from a constant start). (The loop-back edge is not
    followed: the pattern is the one edgesr's exporter writes.)"""
    if op.get_type_name() == "TensorIterator":
        return int(op.get_num_iterations())
    execute = op.input_value(1).get_node()
    if _is_constant(execute) and not bool(np.ravel(execute.get_data())[0]):
        return 0  # the first condition is false: the body never runs
    trip = op.input_value(0).get_node()
    if _is_constant(trip):
        value = int(np.ravel(trip.get_data())[0])
        if 0 <= value < 2**31:  # exporters write -1 or INT64_MAX for "no limit"
            return value
    body = op.get_function()
    ports = op.get_special_body_ports()
    condition = body.get_results()[ports[1]].input_value(0).get_node()
    try:
        if condition.get_type_name() != "Less":
            raise ValueError
        counter, limit = (condition.input_value(k).get_node() for k in (0, 1))
        if counter.get_type_name() != "Add" or not _is_constant(limit):
            raise ValueError
        parameter, step = (counter.input_value(k).get_node() for k in (0, 1))
        if not _is_constant(step) or parameter.get_type_name() != "Parameter":
            raise ValueError
        index = next(i for i, p in enumerate(body.get_parameters()) if p == parameter)
        descriptions = op.get_input_descriptions()
        start_port = next(d.input_index for d in descriptions if d.body_parameter_index == index)
        start = op.input_value(start_port).get_node()
        if not _is_constant(start):
            raise ValueError
        first, stride, end = (float(np.ravel(n.get_data())[0]) for n in (start, step, limit))
        if stride <= 0:
            raise ValueError
        return max(1, math.ceil((end - first) / stride))
    except (ValueError, StopIteration):
        raise ConfigError(
            f"{where}: a Loop ({op.get_friendly_name()}) runs a number of times the graph does not fix; "
            "its operations cannot be counted"
        ) from None


def _is_constant(node: Any) -> bool:
    return bool(node.get_type_name() == "Constant")


def _constant(node: Any) -> Any:
    return node.get_data() if _is_constant(node) else None


def _static(shape: Any) -> tuple[int, ...] | None:
    return tuple(int(d) for d in shape.to_shape()) if shape.is_static else None


def _elements(shape: Any) -> int | None:
    dims = _static(shape)
    return None if dims is None else math.prod(dims)


# --- an artifact on a device profile ------------------------------------------------------------


def profile_peaks(peak: PeakFigures, threads: int, device_name: str, kind: str = "cpu") -> Peaks:
    """The :class:`Peaks` of a device profile's ``peak`` figures (``source: this-cpu``: derived here).

    On CUDA GPUs and Jetsons, FP32 convolutions and products run on the tensor cores in TF32 (TensorRT
    and cuDNN do so by default): their peak is ``tf32_gmacs`` where given; FFTs stay on the FP32 cores.

    Raises:
        ConfigError: the profile gives no figures.
    """
    if peak.source == "this-cpu":
        return cpu_peaks(threads_default(threads))
    gmacs = {
        "fp32": peak.fp32_gmacs, "fp16": peak.fp16_gmacs, "bf16": peak.bf16_gmacs, "int8": peak.int8_gmacs,
        "fp32_vector": peak.fp32_gmacs,
    }  # fmt: skip
    if kind in ("cuda", "jetson") and peak.tf32_gmacs > 0:
        gmacs["fp32"] = peak.tf32_gmacs
    if peak.memory_gb_s <= 0 or not any(gmacs.values()):
        raise ConfigError(
            f"device={device_name} gives no peak figures (peak.*_gmacs, peak.memory_gb_s): nothing to "
            "estimate from"
        )
    return Peaks(gmacs=gmacs, memory_gb_s=peak.memory_gb_s, source=peak.source or device_name)


def estimate_artifact(
    folder: Path,
    profile: DeviceProfile,
    *,
    device_name: str,
    record: Mapping[str, Any] | None = None,
    top: int = 10,
) -> dict[str, Any]:
    """The roofline estimate of an exported artifact on a device profile, labelled ``estimated``, with
    the measured error of the estimator beside it.

    Args:
        folder: an artifact folder of ``edgesr export`` for the profile's runtime (its files are checked
            against the manifest).
        profile: the device profile (its ``peak``, ``size``, ``kind``, ``runtime``).
        device_name: the profile's name, for the record.
        record: the estimator's measured error (default: :func:`error_record`, which refuses when the
            error has not been measured).
        top: how many of the costliest operations to list.

    Raises:
        EstimatorNotCalibrated: the estimator's error has not been measured.
        ConfigError: the artifact is for another runtime, no peak figures, or a graph that cannot be
            counted.
        DataError: the artifact's files do not match its manifest.
    """
    from edgesr.bench.timing import latency_inputs
    from edgesr.export.manifest import read_manifest

    record = dict(record) if record is not None else error_record()
    manifest = read_manifest(folder)  # checks every file against its hash
    if manifest.runtime != profile.runtime:
        raise ConfigError(
            f"device={device_name} runs {profile.runtime}; {folder} is an artifact for {manifest.runtime} "
            f"(target {manifest.target}): export it for a {profile.runtime} target to estimate it there"
        )
    peaks = profile_peaks(profile.peak, profile.threads, device_name, profile.kind)
    float_precision = float_precision_of(manifest.runtime, manifest.precision, profile.kind)
    shapes = {name: tuple(t.shape) for name, t in latency_inputs(manifest.spec, profile.size).items()}
    path = graph_file(folder, manifest.entry, manifest.files)
    estimate = estimate_graph(path, shapes, peaks, float_precision=float_precision)
    bound_ms = estimate.seconds * 1000.0
    entries = record["entries"]
    alike = [e for e in entries if e["kind"] == profile.kind and e["runtime"] == profile.runtime]
    same_precision = [e for e in alike if e["precision"] == manifest.precision]
    scale_by = same_precision or alike
    costliest = sorted(estimate.ops, key=lambda op: op.seconds * op.times, reverse=True)[:top]
    result: dict[str, Any] = {
        "estimated": True,
        "method": "roofline: the sum over operations of max(MACs / peak MAC rate, bytes / peak "
        "bandwidth); a bound as far as the peaks are true peaks and the bytes reach memory",
        "device": device_name,
        "subject": {
            "folder": str(folder),
            "runtime": manifest.runtime,
            "precision": manifest.precision,
            "target": manifest.target,
            "graph": path.name,
            "source": dict(manifest.source),
        },  # fmt: skip
        "input_shapes": estimate.input_shapes,
        "peaks": {
            "gmacs": dict(peaks.gmacs),
            "memory_gb_s": round(peaks.memory_gb_s, 1),
            "source": peaks.source,
        },  # fmt: skip
        "float_precision": float_precision,
        "macs": estimate.macs,
        "bytes": estimate.bytes,
        "estimated_bound_ms": round(bound_ms, 3),
        "compute_bound_ms": round(estimate.seconds_of(lambda op: op.bound == "compute") * 1000.0, 3),
        "memory_bound_ms": round(estimate.seconds_of(lambda op: op.bound == "memory") * 1000.0, 3),
        "data_movement_ms": round(estimate.seconds_of(lambda op: op.kind in MOVEMENT_OPS) * 1000.0, 3),
        "uncounted_ops": estimate.uncounted,
        "costliest_ops": [
            {
                "name": op.name,
                "kind": op.kind,
                "precision": op.precision,
                "times": op.times,
                "macs": op.macs,
                "bytes": op.bytes,
                "bound": op.bound,
                "ms": round(op.seconds * op.times * 1000.0, 4),
            }  # fmt: skip
            for op in costliest
        ],
        "estimator_error": {
            "measured_on": record.get("machine", {}),
            "date": record.get("date", ""),
            "by_runtime": error_summary(entries),
            "by_kind": _error_by_kind(entries, record),
            "ratio": "measured p50 / estimated bound",
        },  # fmt: skip
    }
    if scale_by:  # this kind of device and runtime was measured: scale the bound by what it measured
        measured = error_summary(scale_by)["all"]
        result["estimated_p50_ms"] = {
            "median": round(bound_ms * measured["median"], 3), "low": round(bound_ms * measured["min"], 3),
            "high": round(bound_ms * measured["max"], 3), "from_measurements": measured["count"],
            "of": f"{profile.kind} {profile.runtime}" + (f" {manifest.precision}" if same_precision else ""),
        }  # fmt: skip
    else:
        result["estimated_p50_ms"] = None
        result["note"] = (
            f"the estimator's error was never measured on a {profile.kind} device with {profile.runtime}: "
            "only the roofline figure is given; the real latency can be several times higher"
        )
    return result


# --- the record of the estimator's error --------------------------------------------------------


def error_record(path: Path | None = None) -> dict[str, Any]:
    """The measured ratios of real p50 to the roofline bound (``benchmarks/roofline_error.py``), from
    ``path`` (default: :data:`ERROR_RECORD`).

    Raises:
        EstimatorNotCalibrated: no record, or one without measurements.
    """
    path = path if path is not None else ERROR_RECORD
    if not path.is_file():
        raise EstimatorNotCalibrated(
            f"the roofline estimator's error has not been measured ({path} is missing); run "
            "`python benchmarks/roofline_error.py` on a machine with the devices first"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EstimatorNotCalibrated(f"{path} cannot be read: {exc}") from None
    entries = record.get("entries") if isinstance(record, dict) else None
    if not entries:
        raise EstimatorNotCalibrated(f"{path} holds no measurements")
    for index, entry in enumerate(entries):
        missing = [k for k in ("runtime", "precision", "kind", "ratio") if k not in entry]
        if missing:
            raise EstimatorNotCalibrated(f"{path}: entries.{index} has no {', '.join(missing)}")
    return dict(record)


def _error_by_kind(entries: list[Mapping[str, Any]], record: Mapping[str, Any]) -> dict[str, Any]:
    """The error summary per kind of device (cpu, cuda, ...) with the machines it was measured on: a
    record holds this CPU's measurements and those recorded on a lent GPU (each entry may name its own
    machine; the others were measured on the record's)."""

    def machine(entry: Mapping[str, Any]) -> str:
        own = entry.get("measured_on")
        if isinstance(own, Mapping):
            return str(own.get("gpu") or own.get("cpu") or "?")
        return str(record.get("machine", {}).get("cpu", "?"))

    by_kind: dict[str, Any] = {}
    for kind in sorted({str(e["kind"]) for e in entries}):
        of_kind = [e for e in entries if e["kind"] == kind]
        by_kind[kind] = {
            "measured_on": sorted({machine(e) for e in of_kind}),
            "by_runtime": error_summary(of_kind),
        }
    return by_kind


def error_summary(entries: list[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Median, min and max of measured p50 / estimated bound, and the count: per ``runtime/precision``,
    per runtime and over all."""
    if not entries:
        return {}
    groups: dict[str, list[float]] = {"all": []}
    for entry in entries:
        ratio = float(entry["ratio"])
        groups["all"].append(ratio)
        groups.setdefault(str(entry["runtime"]), []).append(ratio)
        groups.setdefault(f"{entry['runtime']}/{entry.get('precision', '?')}", []).append(ratio)
    return {
        key: {
            "median": round(float(np.median(values)), 2),
            "min": round(min(values), 2),
            "max": round(max(values), 2),
            "count": len(values),
        }  # fmt: skip
        for key, values in groups.items()
    }


def float_precision_of(runtime: str, precision: str, kind: str) -> str:
    """The precision the float operations of an artifact run in: its own for a float artifact; for an
    INT8 one, what the runtime falls back to (OpenVINO on a CPU with BF16 units: BF16, its default
    there; TensorRT: FP16, the engines' fallback; ONNX Runtime: FP32)."""
    if precision in ("fp32", "bf16", "fp16"):
        return precision
    if runtime == "tensorrt" or kind in ("cuda", "jetson"):
        return "fp16"
    if runtime == "openvino" and kind == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


def threads_default(threads: int) -> int:
    return threads if threads > 0 else len(os.sched_getaffinity(0))


__all__ = [
    "ERROR_RECORD",
    "Estimate",
    "EstimatorNotCalibrated",
    "OpCost",
    "Peaks",
    "cpu_peaks",
    "error_record",
    "estimate_artifact",
    "error_summary",
    "estimate_graph",
    "float_precision_of",
    "graph_file",
    "profile_peaks",
]
