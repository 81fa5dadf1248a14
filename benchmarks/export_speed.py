"""How long `edgesr export` takes for every shipped model (issue 12's target: under 2 minutes each).

    .venv/bin/python benchmarks/export_speed.py [--target cpu-onnxruntime] [--precisions fp32]
        [--models rdn-mr-x2,modl-r4] [--threads 2]

Each shipped teacher and edge student is exported by the command a user runs, in its own process, one
after the other: `edgesr export model=M target=T precisions=[...] out=runs/export-speed/T/M`. Printed per
model: the wall time of the whole command (start-up, data, ONNX export, every precision built and
verified), the ONNX export alone, the verification figure, and whether it met the 2-minute target.
The table is also written to `runs/export-speed/<target>.json`. Run it on an idle machine (the load
average is printed): a training run beside it doubles every figure on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 120.0


def _figure(verification: dict) -> str:
    if verification.get("check") == "parity":
        return f"max error {verification['relative_error']:.1e} of the range"
    return f"{-verification['psnr_drop_db']:+.3f} dB vs PyTorch FP32"


def main() -> int:
    from edgesr.teachers import list_shipped

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default="cpu-onnxruntime")
    parser.add_argument("--precisions", default="fp32", help="comma-separated, e.g. fp32,int8")
    parser.add_argument("--models", default="", help="comma-separated shipped models (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m] or list_shipped()
    out_root = ROOT / "runs" / "export-speed" / args.target
    rows = []
    print(f"target {args.target} [{args.precisions}], {args.threads} threads, load {os.getloadavg()[0]:.2f}")
    for model in models:
        out = out_root / model
        command = [
            sys.executable, "-m", "edgesr", "export", f"model={model}", f"target={args.target}",
            f"precisions=[{args.precisions}]", f"out={out}", f"threads={args.threads}",
        ]  # fmt: skip
        started = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
        seconds = time.perf_counter() - started
        row: dict = {"model": model, "seconds": round(seconds, 1), "ok": completed.returncode == 0}
        if completed.returncode == 0:
            summary = json.loads((out / "export.json").read_text(encoding="utf-8"))
            row["onnx_export_seconds"] = summary["onnx_export_seconds"]
            row["artifacts"] = {
                p: {"seconds": a["seconds"], "verification": _figure(a["verification"])}
                for p, a in summary["artifacts"].items()
            }
        else:
            row["error"] = (completed.stderr or completed.stdout).strip().splitlines()[-1:]
        row["met"] = row["ok"] and seconds <= TARGET_SECONDS
        rows.append(row)
        detail = (
            f"ONNX {row['onnx_export_seconds']:.0f} s; "
            + "; ".join(f"{p} {a['seconds']:.0f} s, {a['verification']}" for p, a in row["artifacts"].items())
            if row["ok"]
            else f"failed: {row['error']}"
        )
        verdict = "met" if row["met"] else "MISSED"
        print(f"{model:18s} {seconds:6.1f} s  ({verdict} < {TARGET_SECONDS:.0f} s)  {detail}", flush=True)
    out_root.mkdir(parents=True, exist_ok=True)
    record = {"target": args.target, "precisions": args.precisions, "threads": args.threads,
              "load_average_end": os.getloadavg()[0], "rows": rows}  # fmt: skip
    (out_root.parent / f"{args.target}.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    return 0 if all(r["met"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
