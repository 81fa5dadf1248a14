"""The device harness against a bare runtime loop, and against itself (issue 12's harness targets).

    .venv/bin/python benchmarks/harness_overhead.py ARTIFACT_DIR [--threads 2] [--repeats 3]

For one exported artifact (``edgesr export``), alternating in fresh processes ``--repeats`` times:

* **harness**: ``edgesr.bench.worker`` as ``edgesr bench`` runs it (manifest check, the predictor, the
  harness's warm-up and timed runs);
* **bare**: the runtime alone in a fresh interpreter: ``openvino.Core().compile_model`` (with the
  artifact's precision hint) or an ``onnxruntime.InferenceSession``, then a plain loop of
  ``perf_counter`` around ``infer`` on the same input, with the same warm-up and run counts.

Both are pinned to the same first ``--threads`` CPU cores, as a device profile pins its worker.

Printed: each p50, the harness/bare ratio (target: within 5%), and the spread of the harness's own
p50s across repeats (repeatability target: within 5%). Run it on an idle machine; the load average is
printed beside the figures.

On a VM whose speed drifts from process to process (this one: bare p50s of one artifact 11.6-19.3 ms
in three fresh processes), process-level ratios measure the drift more than the harness. So the same
comparison also runs **interleaved in one process** (``INTERLEAVED``): edgesr's predictor (opened from
the artifact, manifest checked) and a bare compiled model of the same file alternate call by call on
the same input, each timed with ``perf_counter``, and the ratio of their p50s is printed. (Two ONNX
Runtime sessions in one process slow each other through their spinning thread pools, alike: the
ratio holds, the absolute figures do not.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The bare runtime on the artifact's file, as its documentation shows it: defines ``bare()`` from the
# ``request``, ``manifest`` and ``feeds`` the script before it set up. Shared by both scripts below.
_BARE_RUNTIME = r"""
path = str(Path(request["artifact"]) / manifest.entry)
if manifest.runtime == "openvino":
    import openvino
    from edgesr.export.openvino import precision_hint
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": request["threads"]}
    hint = precision_hint(manifest.precision)
    if hint != "default":
        config["INFERENCE_PRECISION_HINT"] = hint
    infer_request = openvino.Core().compile_model(path, "CPU", config).create_infer_request()
    bare = lambda: infer_request.infer(feeds)
else:
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = request["threads"]
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    bare = lambda: session.run(None, feeds)
"""

_PINNED = r"""
import json, os, sys, time
from pathlib import Path
import numpy as np
request = json.loads(sys.argv[1])
if request["cores"]:
    os.sched_setaffinity(0, request["cores"])  # pinned as the harness pins its worker
"""

BARE = (
    _PINNED
    + r"""
from edgesr.bench.timing import latency_inputs
from edgesr.export.manifest import read_manifest
manifest = read_manifest(Path(request["artifact"]), verify=False)
feeds = {k: v.numpy() for k, v in latency_inputs(manifest.spec, request["size"]).items()}
"""
    + _BARE_RUNTIME
    + r"""
warm = time.perf_counter()
while True:
    bare()
    if time.perf_counter() - warm >= 0.2:
        break
samples = []
for _ in range(request["runs"]):
    started = time.perf_counter()
    bare()
    samples.append((time.perf_counter() - started) * 1000.0)
print(json.dumps({"p50": float(np.percentile(samples, 50))}))
"""
)

INTERLEAVED = (
    _PINNED
    + r"""
from edgesr.bench.timing import artifact_inputs
from edgesr.export.artifact import open_artifact
predictor, manifest = open_artifact(request["artifact"], threads=request["threads"])
inputs = artifact_inputs(manifest.spec, predictor, request["size"])
feeds = {k: v.numpy() for k, v in inputs.items()}
"""
    + _BARE_RUNTIME
    + r"""
for _ in range(5):
    predictor(inputs), bare()
harness_ms, bare_ms = [], []
for _ in range(request["runs"]):
    started = time.perf_counter()
    predictor(inputs)
    middle = time.perf_counter()
    bare()
    bare_ms.append((time.perf_counter() - middle) * 1000.0)
    harness_ms.append((middle - started) * 1000.0)
print(json.dumps({"harness_p50": float(np.median(harness_ms)), "bare_p50": float(np.median(bare_ms))}))
"""
)


def _json_line(command: list[str]) -> dict:
    completed = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads([line for line in completed.stdout.splitlines() if line.startswith("{")][-1])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    timing = {"warmup_runs": 1, "warmup_seconds": 0.2, "min_runs": args.runs, "min_seconds": 0.0,
              "max_runs": args.runs}  # fmt: skip
    cores = sorted(os.sched_getaffinity(0))[: args.threads]  # as a device profile pins (pin: true)
    harness_request = {"artifact": str(args.artifact), "threads": args.threads, "size": args.size,
                       "timing": timing, "device": "cpu", "cores": cores}  # fmt: skip
    bare_request = {
        "artifact": str(args.artifact), "threads": args.threads, "size": args.size, "runs": args.runs,
        "cores": cores,
    }  # fmt: skip
    harness, bare = [], []
    for _ in range(args.repeats):  # alternated, so that a drift of the machine hits both alike
        answer = _json_line([sys.executable, "-m", "edgesr.bench.worker", json.dumps(harness_request)])
        harness.append(answer["latency_ms"]["p50"])
        bare.append(_json_line([sys.executable, "-c", BARE, json.dumps(bare_request)])["p50"])
    ratio = statistics.median(harness) / statistics.median(bare)
    spread = (max(harness) - min(harness)) / statistics.median(harness)
    print(f"artifact {args.artifact}, {args.threads} threads, load {os.getloadavg()[0]:.2f}")
    print(f"harness p50s {', '.join(f'{v:.2f}' for v in harness)} ms")
    print(f"bare p50s {', '.join(f'{v:.2f}' for v in bare)} ms")
    verdict = "met" if abs(ratio - 1) <= 0.05 else "missed"
    print(f"harness / bare: {ratio:.3f} (target within 5%: {verdict})")
    verdict = "met" if spread <= 0.05 else "missed"
    print(f"harness repeatability: p50s within {spread:.1%} (target 5%: {verdict})")
    together = _json_line(
        [sys.executable, "-c", INTERLEAVED, json.dumps(bare_request | {"runs": 4 * args.runs})]
    )
    ratio = together["harness_p50"] / together["bare_p50"]
    verdict = "met" if abs(ratio - 1) <= 0.05 else "missed"
    print(
        f"interleaved in one process ({4 * args.runs} calls each): harness {together['harness_p50']:.2f} ms, "
        f"bare {together['bare_p50']:.2f} ms, ratio {ratio:.3f} (target within 5%: {verdict})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
