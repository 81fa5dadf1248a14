"""The rdn-mr-x2 trade-off sweep: prune ratio x precision, one quick-start run per ratio.

    .venv/bin/python benchmarks/prune_sweep.py [--ratios 0.25 0.5 0.75] [--round-to 8] [--steps 900] [--rerun]

Each ratio runs ``edgesr compress recipe=quickstart stages.0.ratio=R stages.0.round_to=N`` (about 7
minutes on 2 cores; round_to 8 so that the 32-channel layers keep 24, 16 and 8 channels)
into ``runs/compress/sweep/ratio-R``; a ratio whose report already exists is read, not re-run
(``--rerun`` resumes it, which re-scores and re-times every run). Every report contributes its
``trade_off`` points (teacher and student in torch, ONNX Runtime and OpenVINO, FP32/BF16/INT8). The
merged points, each with its prune ratio, go to ``runs/compress/sweep/report.json`` under
``trade_off`` (with the sweep's settings and each ratio's machine record) for a Pareto plot.
Latencies are compared as ratios to the teacher in torch FP32 *of the same report* (each report
times its own teacher), so runs made at different machine loads stay comparable.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from edgesr.commands.compress import GATE_MISSED

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--steps", type=int, default=900, help="distillation steps after each prune")
    parser.add_argument("--round-to", type=int, default=8, help="kept channels are multiples of this")
    parser.add_argument("--rerun", action="store_true", help="resume and re-report ratios already run")
    args = parser.parse_args()
    sweep = ROOT / "runs" / "compress" / "sweep"
    points, machines = [], {}
    for ratio in args.ratios:
        out = sweep / f"ratio-{ratio:g}"
        if args.rerun or not (out / "report.json").is_file():
            command = [sys.executable, "-m", "edgesr", "compress", "recipe=quickstart", f"out={out}",
                       f"stages.0.ratio={ratio}", f"stages.0.round_to={args.round_to}",
                       f"stages.0.steps={args.steps}"]  # fmt: skip
            if (out / "recipe.resolved.yaml").is_file():
                command.append("resume=true")
            # A ratio whose model misses the quickstart's gate is a point of the curve all the same.
            status = subprocess.run(command, cwd=ROOT).returncode
            if status not in (0, GATE_MISSED):
                raise SystemExit(f"edgesr compress failed at ratio {ratio} (exit status {status})")
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
        machines[f"{ratio:g}"] = report["machine"]
        reference = next(r for r in report["runs"] if r["name"] == "teacher/torch/fp32")
        teacher_ms = reference["latency_ms"]["p50"]
        for point in report["trade_off"]:
            is_teacher = point["run"].startswith("teacher/")
            points.append(
                point | {"prune_ratio": 0.0 if is_teacher else ratio,
                         "speedup_vs_teacher_torch_fp32": round(teacher_ms / point["p50_ms"], 2),
                         "psnr_vs_teacher_db": round(point["psnr"] - reference["psnr"], 3)}
            )  # fmt: skip
    sweep.mkdir(parents=True, exist_ok=True)
    merged = {
        "recipe": "quickstart",
        "sweep": {
            "ratios": args.ratios,
            "round_to": args.round_to,
            "steps": args.steps,
            "runs": [f"ratio-{r:g}" for r in args.ratios],
        },  # fmt: skip
        "machine": machines,
        "trade_off": points,
    }
    (sweep / "report.json").write_text(json.dumps(merged, indent=1), encoding="utf-8")
    print(f"{'ratio':>6} {'run':<32} {'executed':<10} {'speed-up':>9} {'dB vs teacher':>14}")
    for p in points:
        print(
            f"{p['prune_ratio']:>6g} {p['run']:<32} {p['executed_precision']:<10} "
            f"{p['speedup_vs_teacher_torch_fp32']:>8.2f}x {p['psnr_vs_teacher_db']:>+14.3f}"
        )
    print(f"{len(points)} points: {sweep / 'report.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
