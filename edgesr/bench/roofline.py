"""Roofline estimates of an artifact's latency on a device that is not here (``bench ... estimate=true``).

A device that is not present is never "measured" (:func:`edgesr.bench.devices.check_present`). What can
be said about it without running there is a roofline bound: every operation of the artifact's graph
takes at least its multiply-accumulates divided by the device's peak MAC rate at the precision it runs
in, and at least the bytes it moves divided by the device's peak memory bandwidth. The sum over the
operations is a lower bound on the latency, not a prediction: real runtimes reach a fraction of the
peak (narrow layers leave matrix units idle, kernels launch, caches miss). How large that fraction is
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

import json
import math
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgesr.errors import ConfigError, EdgesrError

ERROR_RECORD = Path(__file__).resolve().parents[2] / "devices" / "roofline_error.json"
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}
COMPUTE_OPS = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul")
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
        if rate <= 0:
            raise ConfigError(f"the device profile gives no peak for {precision} ({self.source})")
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
    ops: list[OpCost] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(op.seconds * op.times for op in self.ops)

    @property
    def macs(self) -> float:
        return sum(op.macs * op.times for op in self.ops)

    @property
    def bytes(self) -> float:
        return sum(op.bytes * op.times for op in self.ops)

    def bound_seconds(self, bound: str) -> float:
        return sum(op.seconds * op.times for op in self.ops if op.bound == bound)


# --- peaks of the CPU this runs on ---------------------------------------------------------------


def cpu_peaks(threads: int) -> Peaks:
    """Peak MAC rates of ``threads`` cores of this machine's CPU, from its instruction set and clock,
    and its memory bandwidth as a copy measured here (a CPU's published bandwidth is the socket's).

    MACs per cycle and core, by the vendors' documentation of the units: AVX-512 with two FMA ports 32
    FP32 (AVX2: 16); AMX 512 BF16 and 1024 INT8 (one tile multiply per cycle), else AVX-512 BF16 64 and
    AVX-512 VNNI 128 INT8 (AVX-VNNI: 64).
    """
    flags, mhz = _cpu_flags_and_mhz()
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
    giga = cores * mhz / 1000.0
    wide = ("avx512f", "amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni")
    units = "+".join(f for f in wide if f in flags)
    bandwidth = measure_copy_bandwidth()
    return Peaks(
        gmacs={"fp32": fp32 * giga, "bf16": bf16 * giga, "fp16": fp32 * giga, "int8": int8 * giga},
        memory_gb_s=bandwidth,
        source=f"this CPU: {units or 'no wide vector units'} at {mhz:.0f} MHz x {cores} cores; "
        f"memory: a copy measured here, {bandwidth:.1f} GB/s",
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


def measure_copy_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """GB/s of a large array copy (read + write), best of ``repeats``: the memory bandwidth one thread
    gets here (numpy's copy is one thread)."""
    source = np.ones(megabytes * 2**20 // 8)
    target = np.empty_like(source)
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - started)
    return 2 * source.nbytes / best / 1e9


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
    model = ov.Core().read_model(str(path))
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
    estimate = Estimate()
    for cost in _walk(model, peaks, float_precision, times=1, where=str(path), fused=set()):
        estimate.ops.append(cost)
    return estimate


def _walk(
    model: Any, peaks: Peaks, float_precision: str, *, times: int, where: str, fused: set[str]
) -> Iterator[OpCost]:
    """The costs of ``model``'s operations; ``fused`` collects the element-wise ops taken as fused
    into a compute op (so that a chain conv -> bias -> ReLU is one op)."""
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind in ("Loop", "TensorIterator"):
            count = _loop_count(op, where)
            body = op.get_function()
            yield from _walk(body, peaks, float_precision, times=times * count, where=where, fused=fused)
            continue
        cost = _op_cost(op, kind, peaks, float_precision, fused)
        if cost is not None:
            cost.times = times
            yield cost


def _op_cost(op: Any, kind: str, peaks: Peaks, float_precision: str, fused: set[str]) -> OpCost | None:
    if kind in FREE_OPS:
        return None
    out_elements = _elements(op.get_output_partial_shape(0)) if op.get_output_size() else 0
    if out_elements is None or out_elements < SMALL and kind not in COMPUTE_OPS:
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
            return None
        complex_elements = math.prod(shape[:-1])  # the last axis holds real and imaginary parts
        logs = sum(math.log2(max(shape[int(a) % (len(shape) - 1)], 2)) for a in np.ravel(axes))
        macs = 2.5 * complex_elements * logs
        moved = 2 * complex_elements * 2 * BYTES["fp32"]
        return _timed(OpCost(name, kind, "fp32", macs, moved), peaks)
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
    ``fixed_count_loop`` exports (``step + 1 < N``, from a constant start)."""
    trip = op.input_value(0).get_node()
    if _is_constant(trip):
        value = int(np.ravel(trip.get_data())[0])
        if value >= 0:
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


def profile_peaks(peak: Any, threads: int, device_name: str) -> Peaks:
    """The :class:`Peaks` of a device profile's ``peak`` figures (``source: this-cpu``: derived here).

    Raises:
        ConfigError: the profile gives no figures.
    """
    if peak.source == "this-cpu":
        return cpu_peaks(threads_default(threads))
    gmacs = {
        "fp32": peak.fp32_gmacs, "fp16": peak.fp16_gmacs, "bf16": peak.bf16_gmacs, "int8": peak.int8_gmacs,
    }  # fmt: skip
    if peak.memory_gb_s <= 0 or not any(gmacs.values()):
        raise ConfigError(
            f"device={device_name} gives no peak figures (peak.*_gmacs, peak.memory_gb_s): nothing to "
            "estimate from"
        )
    return Peaks(gmacs=gmacs, memory_gb_s=peak.memory_gb_s, source=peak.source or device_name)


def estimate_artifact(
    folder: Path,
    profile: Any,
    *,
    device_name: str,
    record: Mapping[str, Any] | None = None,
    top: int = 10,
) -> dict[str, Any]:
    """The roofline estimate of an exported artifact on a device profile, labelled ``estimated``, with
    the measured error of the estimator beside it.

    Args:
        folder: an artifact folder of ``edgesr export`` (its files are checked against the manifest).
        profile: the :class:`~edgesr.bench.devices.DeviceProfile` (its ``peak``, ``size``, ``kind``).
        device_name: the profile's name, for the record.
        record: the estimator's measured error (default: :func:`error_record`, which refuses when the
            error has not been measured).
        top: how many of the costliest operations to list.

    Raises:
        EstimatorNotCalibrated: the estimator's error has not been measured.
        ConfigError: no peak figures, or a graph that cannot be counted.
        DataError: the artifact's files do not match its manifest.
    """
    from edgesr.bench.timing import latency_inputs
    from edgesr.export.manifest import read_manifest

    record = dict(record) if record is not None else error_record()
    manifest = read_manifest(folder)  # checks every file against its hash
    peaks = profile_peaks(profile.peak, profile.threads, device_name)
    float_precision = float_precision_of(manifest.runtime, manifest.precision, profile.kind)
    shapes = {name: tuple(t.shape) for name, t in latency_inputs(manifest.spec, profile.size).items()}
    path = graph_file(folder, manifest.entry, manifest.files)
    estimate = estimate_graph(path, shapes, peaks, float_precision=float_precision)
    bound_ms = estimate.seconds * 1000.0
    same_kind = [
        e for e in record["entries"] if e.get("kind") == profile.kind and e.get("runtime") == manifest.runtime
    ]
    measured = error_summary(same_kind)["all"] if same_kind else None
    costliest = sorted(estimate.ops, key=lambda op: op.seconds * op.times, reverse=True)[:top]
    result: dict[str, Any] = {
        "estimated": True,
        "method": "roofline lower bound: the sum over operations of max(MACs / peak MAC rate, bytes / "
        "peak bandwidth)",
        "device": device_name,
        "subject": {
            "folder": str(folder),
            "runtime": manifest.runtime,
            "precision": manifest.precision,
            "graph": path.name,
            "source": dict(manifest.source),
        },  # fmt: skip
        "input_shapes": {name: list(shape) for name, shape in shapes.items()},
        "peaks": {
            "gmacs": dict(peaks.gmacs),
            "memory_gb_s": round(peaks.memory_gb_s, 1),
            "source": peaks.source,
        },  # fmt: skip
        "float_precision": float_precision,
        "macs": estimate.macs,
        "bytes": estimate.bytes,
        "estimated_bound_ms": round(bound_ms, 3),
        "compute_bound_ms": round(estimate.bound_seconds("compute") * 1000.0, 3),
        "memory_bound_ms": round(estimate.bound_seconds("memory") * 1000.0, 3),
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
            "by_runtime": error_summary(record["entries"]),
            "ratio": "measured p50 / estimated bound",
        },  # fmt: skip
    }
    if measured is not None:  # this kind of device and runtime was measured: scale the bound by it
        result["estimated_p50_ms"] = {
            "median": round(bound_ms * measured["median"], 3), "low": round(bound_ms * measured["min"], 3),
            "high": round(bound_ms * measured["max"], 3), "from_measurements": measured["count"],
        }  # fmt: skip
    else:
        result["estimated_p50_ms"] = None
        result["note"] = (
            f"the estimator's error was never measured on a {profile.kind} device with {manifest.runtime}: "
            "only the lower bound is given; the real latency can be several times higher"
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
    if not record.get("entries"):
        raise EstimatorNotCalibrated(f"{path} holds no measurements")
    return dict(record)


def error_summary(entries: list[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per runtime and over all: median, min and max of measured p50 / estimated bound, and the count."""
    if not entries:
        return {}
    groups: dict[str, list[float]] = {"all": []}
    for entry in entries:
        ratio = float(entry["ratio"])
        groups["all"].append(ratio)
        groups.setdefault(str(entry["runtime"]), []).append(ratio)
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
        flags, _ = _cpu_flags_and_mhz()
        return "bf16" if {"amx_bf16", "avx512_bf16"} & flags else "fp32"
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
