"""How far the roofline estimator (``edgesr bench ... estimate=true``) is from measurements (issue 12).

    .venv/bin/python benchmarks/roofline_error.py [ARTIFACT_DIR ...] [--out devices/roofline_error.json]

For each exported artifact (default: the shipped models exported to ``runs/roofline/<target>/<model>``
for the CPU runtimes, by ``edgesr export``, when not there yet), on this machine's CPU device profile
for its runtime (``cpu-openvino``, ``cpu-onnxruntime``):

* **measured**: the harness's p50, in a fresh pinned worker process, as ``edgesr bench`` times it;
* **estimated**: the roofline bound of :mod:`edgesr.bench.roofline` with the profile's peaks (this CPU:
  its instruction set and clock, and a memory copy measured here).

Printed and written to ``--out`` (which ``estimate=true`` reads, and refuses to estimate without):
each pair, the ratio measured / estimated, and per runtime the median and range of the ratios. Run
it on an idle machine (the load average is recorded).

    .venv/bin/python benchmarks/roofline_error.py --recorded runs/gpu-h200-2026-11-30/bench/*.json

adds measurements made on a device that is not here: each run of a recorded ``bench.json`` (e.g. on a
lent GPU, `edgesr bench model=M device=gpu-torch`) against the roofline of the model's ONNX graph
(exported here for ONNX Runtime FP32; the graph is the same network) on that bench's device profile, at
the shapes it timed and the precision it ran. These entries are merged into the existing record (each
marked with the file it came from and the machine it was measured on), the CPU entries are kept, and
the CPU is not measured again unless artifacts are named too.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# (model, target, precisions): float and INT8 where a card carries the quantization settings
DEFAULT_EXPORTS = [
    ("rdn-mr-x2", "cpu-openvino", "fp32,bf16"),
    ("rdn-mr-x2", "cpu-onnxruntime", "fp32"),
    ("rdn-mr-x2-edge", "cpu-openvino", "fp32,bf16,int8"),
    ("rdn-mr-x2-edge", "cpu-onnxruntime", "fp32"),  # its INT8 misses the export gate in ONNX Runtime
    ("rdn-mr-x4-edge", "cpu-openvino", "bf16,int8"),
    ("srgan-mr-x4-edge", "cpu-openvino", "bf16,int8"),
    ("srgan-mr-x4-edge", "cpu-onnxruntime", "fp32,int8"),
    ("rdn-ct-x2-edge", "cpu-onnxruntime", "fp32"),
    ("deepcomplex-r4", "cpu-onnxruntime", "fp32"),
    ("deepcomplex-r4", "cpu-openvino", "bf16"),
]


def _default_artifacts() -> list[Path]:
    folders = []
    for model, target, precisions in DEFAULT_EXPORTS:
        out = ROOT / "runs" / "roofline" / target / model
        wanted = precisions.split(",")
        if not all((out / p / "manifest.json").is_file() for p in wanted):
            print(f"exporting {model} for {target} ({precisions})", flush=True)
            command = [
                sys.executable, "-m", "edgesr", "export", f"model={model}", f"target={target}",
                f"precisions=[{precisions}]", f"out={out}",
            ]  # fmt: skip
            if subprocess.run(command, cwd=ROOT, check=False).returncode != 0:
                print(f"export of {model} for {target} failed: measuring what it kept", flush=True)
        folders += [out / p for p in wanted if (out / p / "manifest.json").is_file()]
    return folders


def _onnx_graph(model: str) -> Path:
    """The ONNX graph of a shipped model (its FP32 export for ONNX Runtime), exported when not there."""
    out = ROOT / "runs" / "roofline" / "cpu-onnxruntime" / model
    if not (out / "fp32" / "manifest.json").is_file():
        print(f"exporting {model} for cpu-onnxruntime (its graph is counted)", flush=True)
        command = [sys.executable, "-m", "edgesr", "export", f"model={model}", "target=cpu-onnxruntime",
                   "precisions=[fp32]", f"out={out}"]  # fmt: skip
        subprocess.run(command, cwd=ROOT, check=True)
    return out / "fp32"


def recorded_entries(bench_files: list[Path]) -> list[dict[str, Any]]:
    """Entries of the error record from ``bench.json`` files measured elsewhere (see the module's doc)."""
    import json

    from edgesr.bench.devices import load_device
    from edgesr.bench.roofline import estimate_graph, graph_file, profile_peaks
    from edgesr.export.manifest import read_manifest

    entries = []
    for path in bench_files:
        bench = json.loads(path.read_text(encoding="utf-8"))
        device = str(bench["device"])
        profile = load_device(device)
        peaks = profile_peaks(profile.peak, profile.threads, device, profile.kind)
        for run in bench["runs"]:
            model = str(run["name"]).split("/")[0]
            folder = _onnx_graph(model)
            manifest = read_manifest(folder)  # checks the files against their hashes
            shapes = {name: tuple(shape) for name, shape in run["timed_shapes"].items()}
            precision = str(run["precision"])
            estimate = estimate_graph(
                graph_file(folder, manifest.entry, manifest.files), shapes, peaks, float_precision=precision
            )
            bound = estimate.seconds * 1000.0
            measured = float(run["latency_ms"]["p50"])
            label = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            entries.append({
                "artifact": f"{label}#{run['name']}", "model": model, "runtime": run["runtime"],
                "precision": precision, "device": device, "kind": profile.kind, "float_precision": precision,
                "size": profile.size, "measured_p50_ms": measured, "estimated_bound_ms": round(bound, 4),
                "ratio": round(measured / bound, 3),
                "compute_bound_ms": round(estimate.seconds_of(lambda op: op.bound == "compute") * 1000, 4),
                "memory_bound_ms": round(estimate.seconds_of(lambda op: op.bound == "memory") * 1000, 4),
                "gmacs": round(estimate.macs / 1e9, 3), "memory_gb_s": peaks.memory_gb_s,
                "measured_on": bench["machine"] | {"gpu": run.get("gpu", "")}, "recorded_from": str(label),
            })  # fmt: skip
            print(f"{entries[-1]['artifact']:70} {measured:8.2f}ms {bound:8.3f}ms {measured / bound:7.1f}",
                  flush=True)  # fmt: skip
    return entries


def main() -> int:
    from edgesr._io import write_json_atomic
    from edgesr.bench.devices import load_device, pinned_cores
    from edgesr.bench.roofline import error_summary, estimate_artifact
    from edgesr.bench.timing import machine_info, runtime_versions
    from edgesr.bench.worker import measure_isolated
    from edgesr.export.manifest import read_manifest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="*", type=Path, help="artifact folders (default: shipped models)")
    parser.add_argument("--out", type=Path, default=ROOT / "devices" / "roofline_error.json")
    parser.add_argument(
        "--recorded", nargs="+", type=Path, default=[],
        help="bench.json files measured on a device that is not here, merged into the existing record",
    )  # fmt: skip
    args = parser.parse_args()
    if args.recorded and not args.artifacts:
        return _merge_recorded(args.recorded, args.out)
    artifacts = args.artifacts or _default_artifacts()

    entries = []
    print(f"{'artifact':58} {'measured p50':>12} {'bound':>9} {'ratio':>6}  bound by")
    for folder in artifacts:
        manifest = read_manifest(folder)
        device = {"openvino": "cpu-openvino", "onnxruntime": "cpu-onnxruntime"}.get(manifest.runtime)
        if device is None:
            print(f"{folder}: {manifest.runtime} does not run on this machine's CPU: skipped")
            continue
        profile = load_device(device)
        estimate = estimate_artifact(folder, profile, device_name=device, record={"entries": []})
        request = {
            "threads": profile.threads, "size": profile.size, "batch": 0, "device": "cpu",
            "timing": {"warmup_runs": 3, "warmup_seconds": 0.5, "min_runs": 30, "min_seconds": 3.0,
                       "max_runs": 10_000},
            "runtime": manifest.runtime, "cores": pinned_cores(profile), "artifact": str(folder),
        }  # fmt: skip
        measured = measure_isolated(request)["latency_ms"]["p50"]
        bound = estimate["estimated_bound_ms"]
        compute, memory = estimate["compute_bound_ms"], estimate["memory_bound_ms"]
        label = str(folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder)
        entries.append({
            "artifact": label,
            "model": str(manifest.source.get("shipped") or manifest.source.get("model", "")),
            "runtime": manifest.runtime, "precision": manifest.precision, "device": device, "kind": "cpu",
            "float_precision": estimate["float_precision"], "size": profile.size,
            "measured_p50_ms": measured, "estimated_bound_ms": bound, "ratio": round(measured / bound, 3),
            "compute_bound_ms": compute, "memory_bound_ms": memory, "gmacs": round(estimate["macs"] / 1e9, 3),
            "memory_gb_s": estimate["peaks"]["memory_gb_s"],
        })  # fmt: skip
        print(f"{label:58} {measured:10.1f}ms {bound:7.1f}ms {measured / bound:6.2f}  "
              f"compute {compute:.1f} / memory {memory:.1f} ms", flush=True)  # fmt: skip
    if not entries:
        print("nothing measured")
        return 1
    summary = error_summary(entries)
    for key, figures in summary.items():
        print(f"{key:12} measured/bound median {figures['median']:.2f} (range {figures['min']:.2f}-"
              f"{figures['max']:.2f}, {figures['count']} artifacts)")  # fmt: skip
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/roofline_error.py " + " ".join(str(a) for a in args.artifacts),
        "machine": machine_info() | runtime_versions() | {"affinity": sorted(os.sched_getaffinity(0))},
        "entries": entries,
        "summary": summary,
    }
    write_json_atomic(args.out, record)
    print(f"wrote {args.out}")
    return 0


def _merge_recorded(bench_files: list[Path], out: Path) -> int:
    import json

    from edgesr._io import write_json_atomic
    from edgesr.bench.roofline import error_summary

    record = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {"entries": []}
    new = recorded_entries([p.resolve() for p in bench_files])
    replaced = {e["recorded_from"] for e in new}
    kept = [e for e in record.get("entries", []) if e.get("recorded_from") not in replaced]
    record["entries"] = kept + new
    record["summary"] = error_summary(record["entries"])
    record.setdefault("recorded", [])
    record["recorded"] = sorted(set(record["recorded"]) | replaced)
    for key, figures in record["summary"].items():
        print(f"{key:12} measured/bound median {figures['median']:.2f} (range {figures['min']:.2f}-"
              f"{figures['max']:.2f}, {figures['count']} entries)")  # fmt: skip
    write_json_atomic(out, record)
    print(f"wrote {out}: {len(new)} recorded entries beside {len(kept)} kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
