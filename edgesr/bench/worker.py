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
     "threads": 2, "size": 256, "warmup": 3, "repeats": 20}

The answer: ``latency_ms`` (p50/p90/p99/mean/min), ``executed_precision`` (what actually ran),
``peak_memory_mb`` (the process's peak resident memory above what it held before loading the model),
``process_peak_mb``, ``threads`` and ``runtime_version``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import torch

from edgesr.bench.timing import latency_inputs, time_call
from edgesr.errors import EdgesrError
from edgesr.spec import ModelSpec

RUNTIMES = ("torch", "onnxruntime", "openvino")


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


def measure(request: dict[str, Any]) -> dict[str, Any]:
    """Loads the request's model in this process and times it (see the module docstring)."""
    runtime, precision = request["runtime"], request.get("precision", "fp32")
    threads = int(request.get("threads", 0))
    spec = ModelSpec.from_dict(request["spec"])
    inputs = latency_inputs(spec, int(request.get("size", 256)))
    before = _status_mb("VmRSS")
    if runtime == "torch":
        from edgesr.pipeline import TorchPredictor
        from edgesr.train.checkpoint import load_for_inference

        if precision != "fp32":
            raise EdgesrError(f"torch runs are timed in fp32 only; got precision {precision!r}")
        if threads > 0:
            torch.set_num_threads(threads)
        model, _, _ = load_for_inference(request["model"])
        predictor: Any = TorchPredictor(model, spec, device="cpu")
        executed, version = "fp32", torch.__version__
    elif runtime == "onnxruntime":
        import onnxruntime

        from edgesr.export.onnxruntime import OnnxRuntimePredictor, executed_precision

        predictor = OnnxRuntimePredictor(request["model"], threads=threads)
        executed, version = executed_precision(request["model"]), onnxruntime.__version__
    elif runtime == "openvino":
        import openvino

        from edgesr.export.openvino import OpenVinoPredictor, precision_hint

        hint = precision_hint(precision)
        predictor = OpenVinoPredictor(request["model"], threads=threads, precision=hint)
        executed, version = predictor.executed_precision, openvino.__version__
    else:
        raise EdgesrError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
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
        "runtime_version": version,
    }


def measure_isolated(request: dict[str, Any], *, timeout: float = 900.0) -> dict[str, Any]:
    """:func:`measure` in a fresh interpreter; raises with the worker's own error if it fails."""
    completed = subprocess.run(
        [sys.executable, "-m", "edgesr.bench.worker", json.dumps(request)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
        raise EdgesrError(
            f"timing {request['runtime']} {request.get('precision')} of {request['model']} failed: "
            + " | ".join(tail)
        )
    return dict(json.loads(lines[-1]))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m edgesr.bench.worker '<json request>'", file=sys.stderr)
        return 2
    print(json.dumps(measure(json.loads(args[0]))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
