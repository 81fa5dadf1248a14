"""Times one (model, runtime, precision) in a process of its own: ``python -m edgesr.bench.worker JSON``.

Runtimes timed side by side in one process disturb each other (thread pools that stay awake, memory
that one runtime holds while the next runs; one such probe gave torch figures 9-12x too slow), and a
process's peak memory can only be read for the whole process. So each measurement starts a fresh
interpreter, loads one model, times it, and prints one JSON line.

The request (a JSON object)::

    {"runtime": "torch" | "onnxruntime" | "openvino",
     "model": "<checkpoint folder (torch) or .onnx / .xml file>",
     "spec": {...ModelSpec.to_dict()...},       # the inputs' shapes come from it
     "precision": "fp32" | "default" | "bf16" | "fp16",   # what is asked of the runtime
     "threads": 2, "size": 256, "warmup": 3, "repeats": 20,
     "cores": [0, 1],                            # optional: pin the process to these CPU cores
     "fold": true, "fold_min_kernel": 5}         # optional, torch: the SR tail folded (edgesr.models.fold)

The answer: ``latency_ms`` (p50/p90/p99/mean/min), ``executed_precision`` (what actually ran),
``peak_memory_mb`` (the process's peak resident memory above what it held before loading the model),
``process_peak_mb``, ``threads``, ``cpu_affinity`` (the cores it ran on), ``runtime_version`` and
``malloc`` (``"steady"``: started by :func:`measure_isolated`, freed memory kept in the heap, see
:data:`STEADY_MALLOC`).

The device harness (``edgesr bench``) sends a request of the same form with more keys: ``artifact``
(an export folder, checked against its manifest, instead of ``model``), ``timing`` (the
:class:`~edgesr.bench.harness.TimingSettings` of a device profile, instead of warmup/repeats),
``batch`` (also time an offline run of that many images per call), ``device`` ("cpu" or "cuda") and
``memory`` ("rss" or "cuda"), and ``cores`` (CPU cores to pin this process to, before any runtime
starts its threads). Its answer adds ``throughput``, ``cpu_affinity`` (the cores it ran on) and, on
CUDA, the GPU's name and its allocator and NVML peaks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import torch

from edgesr.bench.timing import artifact_inputs, latency_inputs, runtime_versions, time_call
from edgesr.errors import EdgesrError
from edgesr.models.fold import MIN_KERNEL as FOLD_MIN_KERNEL
from edgesr.spec import ModelSpec

RUNTIMES = ("torch", "onnxruntime", "openvino")

# glibc's malloc hands large freed blocks back to the OS until its dynamic mmap threshold has grown past
# the process's largest buffers, which takes dozens of calls; until then every call page-faults its
# buffers in again. Measured (torch, `modl-r4-edge` in BF16, 256x256, 8 coils, 2 threads): p50 165-225
# ms with p90 up to 1.6x the p50 over the first 30 calls of a fresh process, 146 ms once settled, and
# 149-151 ms from the first call with freed memory kept in the heap. A console process that runs for
# long reaches that steady state by itself; the worker starts in it, so that 20 timed calls measure it.
# (Setting only the trim threshold disables the dynamic one and made every call 5x slower: both are set.)
STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**32)}


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (Linux): VmRSS now, VmHWM its peak.

    Not ``getrusage``'s ``ru_maxrss``: Linux carries that across ``exec``, so a worker started from a
    large parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _pin(request: dict[str, Any]) -> list[int]:
    """Pins this process to the request's ``cores`` (if any); returns the cores it may run on.

    Done before any runtime starts its thread pool: the pools size and place themselves by this mask.
    """
    if request.get("cores"):
        os.sched_setaffinity(0, [int(core) for core in request["cores"]])
    return sorted(os.sched_getaffinity(0))


def measure(request: dict[str, Any]) -> dict[str, Any]:
    """Loads the request's model in this process and times it (see the module docstring)."""
    if "artifact" in request or "timing" in request:
        return measure_on_device(request)
    affinity = _pin(request)
    runtime, precision = request["runtime"], request.get("precision", "fp32")
    threads = int(request.get("threads", 0))
    spec = ModelSpec.from_dict(request["spec"])
    inputs = latency_inputs(spec, int(request.get("size", 256)))
    before = _status_mb("VmRSS")
    predictor, executed, version = _load(
        runtime, precision, request["model"], spec, threads,
        fold=request.get("fold", True), fold_min_kernel=request.get("fold_min_kernel"),
    )  # fmt: skip
    latency = time_call(
        lambda: predictor(inputs),
        warmup=int(request.get("warmup", 3)),
        repeats=int(request.get("repeats", 20)),
    )
    peak = _status_mb("VmHWM")
    return {
        "latency_ms": latency,
        "executed_precision": executed,
        "peak_memory_mb": round(peak - before, 1),
        "process_peak_mb": round(peak, 1),
        "threads": threads if threads > 0 else torch.get_num_threads(),
        "cpu_affinity": affinity,
        "runtime_version": version,
    }


def _load(
    runtime: str,
    precision: str,
    model: str,
    spec: ModelSpec,
    threads: int,
    *,
    fold: Any = True,
    fold_min_kernel: Any = None,
) -> tuple[Any, str, str]:
    """The predictor of a torch checkpoint or a runtime file, what it executes, and the runtime version."""
    if runtime == "torch":
        if precision not in ("fp32", "bf16"):  # the CPU: FP32, or BF16 autocast (see TorchPredictor)
            raise EdgesrError(f"torch runs on the CPU are timed in fp32 or bf16; got precision {precision!r}")
        request = {"model": model, "precision": precision, "fold": fold, "fold_min_kernel": fold_min_kernel}
        torch_predictor, executed = _torch_predictor(request, spec, "cpu", threads)
        return torch_predictor, executed, torch.__version__
    if runtime == "onnxruntime":
        import onnxruntime

        from edgesr.export.onnxruntime import OnnxRuntimePredictor

        predictor = OnnxRuntimePredictor(model, threads=threads)
        return predictor, predictor.executed_precision, onnxruntime.__version__
    if runtime == "openvino":
        import openvino

        from edgesr.export.openvino import OpenVinoPredictor, precision_hint

        ov_predictor = OpenVinoPredictor(model, threads=threads, precision=precision_hint(precision))
        return ov_predictor, ov_predictor.executed_precision, openvino.__version__
    raise EdgesrError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")


def measure_on_device(request: dict[str, Any]) -> dict[str, Any]:
    """The harness's measurement: single-stream latency, offline throughput and peak memory."""
    from edgesr.bench.harness import CudaTimer, Timer, TimingSettings, offline, single_stream

    threads = int(request.get("threads", 0))
    device = request.get("device", "cpu")
    settings = TimingSettings(**request.get("timing", {}))
    answer: dict[str, Any] = {"cpu_affinity": _pin(request)}
    before = _status_mb("VmRSS")
    if "artifact" in request:
        from edgesr.export.artifact import open_artifact

        predictor, manifest = open_artifact(request["artifact"], threads=threads, device=device)
        spec = manifest.spec
        runtime = manifest.runtime
        # OpenVINO's predictor reads it from the compiled model; ONNX Runtime's from the optimised graph.
        executed = str(getattr(predictor, "executed_precision", ""))
        answer["runtime_version"] = runtime_versions().get(runtime, "")
    else:
        spec = ModelSpec.from_dict(request["spec"])
        predictor, executed = _torch_predictor(request, spec, device, threads)
        answer["runtime_version"] = torch.__version__
    size, batch = int(request.get("size", 256)), int(request.get("batch", 0))
    single = artifact_inputs(spec, predictor, size)  # a fixed-shape artifact is timed at its own size
    answer["timed_shapes"] = {name: list(tensor.shape) for name, tensor in single.items()}
    timer: Timer = CudaTimer() if device.startswith("cuda") else Timer()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    answer["latency_ms"] = single_stream(lambda: predictor(single), settings, timer=timer)
    answer["peak_memory_mb"] = round(_status_mb("VmHWM") - before, 1)
    if device.startswith("cuda"):
        answer["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        answer["gpu"] = torch.cuda.get_device_name()
        answer["nvml_used_mb"] = _nvml_used_mb()
    fixed_batch = {shape[0] for shape in (getattr(predictor, "fixed_shapes", None) or {}).values() if shape}
    if batch > 0 and None not in fixed_batch and fixed_batch:
        batch = min(fixed_batch)  # a fixed-shape artifact takes its own batch (1): "offline" is then serial
        answer["throughput_batch"] = batch
    if batch > 0:
        batched = {name: tensor.repeat(batch, *[1] * (tensor.dim() - 1)) for name, tensor in single.items()}
        answer["throughput"] = offline(lambda: predictor(batched), settings, batch=batch, timer=timer)
        answer["peak_memory_batch_mb"] = round(_status_mb("VmHWM") - before, 1)
    return answer | {
        "executed_precision": executed,
        "process_peak_mb": round(_status_mb("VmHWM"), 1),
        "threads": threads if threads > 0 else torch.get_num_threads(),
    }


def _torch_predictor(request: dict[str, Any], spec: ModelSpec, device: str, threads: int) -> tuple[Any, str]:
    """A torch checkpoint on ``device``, run at the request's precision (autocast for bf16/fp16)."""
    from edgesr.pipeline import TorchPredictor
    from edgesr.train.checkpoint import load_for_inference

    if threads > 0:
        torch.set_num_threads(threads)
    precision = request.get("precision", "fp32")
    if precision == "fp16" and not device.startswith("cuda"):
        # CPU autocast to fp16 runs, but the CPUs edgesr targets lack FP16 matrix units: not a useful figure.
        raise EdgesrError(f"torch fp16 is timed on CUDA only (autocast); this run is on {device}")
    module, _, _ = load_for_inference(request["model"])
    # ``fold: false`` times an SR model as trained, without its tail folded (edgesr.models.fold).
    fold, min_kernel = request.get("fold", True), request.get("fold_min_kernel")
    min_kernel = FOLD_MIN_KERNEL if min_kernel is None else min_kernel
    if not isinstance(fold, bool) or not isinstance(min_kernel, int):
        raise EdgesrError(
            f"the request's fold must be true or false and fold_min_kernel an integer; got {request}"
        )
    predictor = TorchPredictor(
        module.to(device), spec, device=device, precision=precision, fold=fold, fold_min_kernel=min_kernel
    )
    return predictor, predictor.executed_precision


def _nvml_used_mb() -> float | None:
    """Device memory in use as NVML sees it (every context, not only the allocator), when pynvml is here."""
    try:
        import pynvml
    except ImportError:
        return None
    pynvml.nvmlInit()
    try:
        index = torch.cuda.current_device()
        info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index))
        return round(float(info.used) / 2**20, 1)
    finally:
        pynvml.nvmlShutdown()


def measure_isolated(request: dict[str, Any], *, timeout: float = 900.0) -> dict[str, Any]:
    """:func:`measure` in a fresh interpreter; raises with the worker's own error if it fails."""
    completed = subprocess.run(
        [sys.executable, "-m", "edgesr.bench.worker", json.dumps(request)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=os.environ | STEADY_MALLOC,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
        raise EdgesrError(
            f"timing {request['runtime']} {request.get('precision')} of "
            f"{request.get('artifact') or request.get('model')} failed: " + " | ".join(tail)
        )
    return dict(json.loads(lines[-1]))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m edgesr.bench.worker '<json request>'", file=sys.stderr)
        return 2
    answer = measure(json.loads(args[0]))
    # Recorded with the figures: whether freed memory stayed in the heap (see STEADY_MALLOC).
    steady = all(os.environ.get(key) == value for key, value in STEADY_MALLOC.items())
    answer["malloc"] = "steady" if steady else "default"
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
