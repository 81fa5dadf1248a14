"""The edge recipes against their targets (issue 11), as ratios measured within one report.

    .venv/bin/python benchmarks/edge_recipes.py [RECIPE ...] [--run]

For each recipe (default: every ``*_edge`` recipe; a ``*_edge_refresh`` recipe has its ``*_edge``
recipe's bars) it reads ``runs/compress/<recipe>/report.json`` (where there is none, the committed report
of the run a shipped student's card was written from, :data:`SHIPPED_RUNS`), or ``DIR/report.json`` for
``RECIPE=DIR`` (the run a shipped card was written from, e.g.
``srgan_mr_x4_edge=runs/compress/srgan_mr_x4_edge_recard``);
with ``--run`` it first runs (or resumes) ``edgesr compress recipe=<recipe>``, which takes an hour or
more per recipe on 2 cores. Every ratio compares runs of one report (same machine, same images,
each run timed in its own process), never figures from different runs:

* speed-up of the fastest student run at the final model's quality vs the teacher in torch FP32;
* speed-up vs the teacher in its best runtime at that runtime's default precision;
* PSNR / SSIM lost vs the teacher in torch FP32 on the slices the recipe's gate is judged on (its
  ``gate_on``: the real scans of the test split by default, a template's slices left out), and over
  every slice beside them;
* for the GAN student, sharpness (gradient energy) relative to the teacher's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from edgesr.commands.compress import GATE_MISSED

ROOT = Path(__file__).resolve().parents[1]

# Issue 11's bars: (speed-up vs teacher torch FP32, speed-up vs teacher's best runtime, max PSNR loss
# dB, max SSIM loss, largest relative change of sharpness vs the teacher's or None).
TARGETS: dict[str, tuple[float, float | None, float, float, float | None]] = {
    "rdn_mr_x2_edge": (10.0, 3.0, 0.15, 0.003, None),
    "rdn_mr_x4_edge": (10.0, 3.0, 0.15, 0.003, None),
    "rdn_ct_x2_edge": (10.0, 3.0, 0.15, 0.003, None),
    # a GAN: judged on sharpness, not PSNR
    "srgan_mr_x4_edge": (4.0, None, float("inf"), float("inf"), 0.10),
    "modl_r4_edge": (3.0, None, 0.3, float("inf"), None),
    "deepcomplex_r4_edge": (10.0, None, 0.3, float("inf"), None),
}


# The committed report of the run each shipped student's card was written from, read when the recipe has
# no run of its own in runs/compress/<recipe>/ (a fresh clone).
SHIPPED_RUNS = {
    "srgan_mr_x4_edge": "runs/compress/srgan_mr_x4_edge_fold",
    "rdn_mr_x4_edge": "runs/compress/rdn_mr_x4_edge_d3_12k",
}


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    runs = [r for r in report["runs"] if "error" not in r]
    teacher_torch = next(
        r for r in runs if r["model"] == "teacher" and r["runtime"] == "torch" and r["precision"] == "fp32"
    )
    # The teacher's runtime runs are each at that runtime's default precision (ONNX Runtime FP32,
    # OpenVINO's own choice); the fastest of them and torch is the teacher at its best.
    teacher_best = min(
        (r for r in runs if r["model"] == "teacher"),
        key=lambda r: r["latency_ms"]["p50"],
        default=teacher_torch,
    )
    fastest = report.get("fastest_at_equal_quality") or {}
    candidates = [r for r in runs if r["name"] in {entry["run"] for entry in fastest.values()}]
    if not candidates:  # no runtime runs: the final model in torch
        final = report["stages"][-1]["name"]
        candidates = [r for r in runs if r["name"].startswith(f"{final}/")]
    student = min(candidates, key=lambda r: r["latency_ms"]["p50"])
    return {
        "student_run": student["name"],
        "executed": student["executed_precision"],
        "vs_teacher_torch_fp32": teacher_torch["latency_ms"]["p50"] / student["latency_ms"]["p50"],
        "teacher_best_run": teacher_best["name"],
        "vs_teacher_best": teacher_best["latency_ms"]["p50"] / student["latency_ms"]["p50"],
        **_losses(report, teacher_torch, student),
        "sharpness": student.get("sharpness_vs_teacher"),  # absent from reports before it was recorded
    }


def _losses(report: dict[str, Any], teacher: dict[str, Any], student: dict[str, Any]) -> dict[str, Any]:
    """PSNR and SSIM lost on the slices the recipe's gate judges (``scored_on``), and on every slice."""
    from edgesr.evaluate import gated_scores

    gate_on = report["recipe"].get("gate_on", "all")  # reports before gate_on scored every slice
    if "by_source" in teacher and "by_source" in student:
        mine, reference = gated_scores(student, gate_on), gated_scores(teacher, gate_on)
    else:
        mine, reference = student | {"scored_on": "all"}, teacher
    return {
        "scored_on": mine["scored_on"],
        "psnr_loss_db": reference["psnr"] - mine["psnr"],
        "ssim_loss": reference["ssim"] - mine["ssim"],
        "all_psnr_loss_db": teacher["psnr"] - student["psnr"],
        "all_ssim_loss": teacher["ssim"] - student["ssim"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipes", nargs="*", default=list(TARGETS))
    parser.add_argument("--run", action="store_true", help="run or resume each recipe first")
    args = parser.parse_args()
    failed = False
    for argument in args.recipes:
        name, _, folder = argument.partition("=")
        out = Path(folder) if folder else ROOT / "runs" / "compress" / name
        if args.run:
            command = [sys.executable, "-m", "edgesr", "compress", f"recipe={name}", f"out={out}"]
            if (out / "recipe.resolved.yaml").is_file():
                command.append("resume=true")
            status = subprocess.run(command, cwd=ROOT).returncode
            if status == GATE_MISSED:  # the report is written: its figures are judged below like any other
                failed = True
            elif status != 0:
                print(f"{name}: edgesr compress failed (its message is above); next recipe")
                failed = True
                continue
        report_path = out / "report.json"
        if not report_path.is_file() and not folder and name in SHIPPED_RUNS:
            report_path = ROOT / SHIPPED_RUNS[name] / "report.json"  # the shipped student's own run
            print(f"{name}: the shipped student's run, {report_path.parent.relative_to(ROOT)}")
        if not report_path.is_file():
            print(f"{name}: no report at {report_path} (run with --run)")
            continue
        figures = summarise(json.loads(report_path.read_text(encoding="utf-8")))
        # A *_refresh recipe (a shipped student re-distilled from a re-trained teacher) has its recipe's bars.
        bars = TARGETS.get(name.removesuffix("_refresh"), (0.0, None, float("inf"), float("inf"), None))
        speed, best, loss, ssim_loss, sharpness = bars
        met = (
            figures["vs_teacher_torch_fp32"] >= speed
            and figures["psnr_loss_db"] <= loss
            and figures["ssim_loss"] <= ssim_loss
        )
        if best is not None:
            met = met and figures["vs_teacher_best"] >= best
        sharp = figures["sharpness"]
        if sharpness is not None:
            met = met and sharp is not None and abs(sharp - 1) <= sharpness
        failed |= not met
        print(
            f"{name}: {figures['student_run']} ({figures['executed']}) "
            f"{figures['vs_teacher_torch_fp32']:.2f}x vs teacher torch FP32 (target {speed}x), "
            f"{figures['vs_teacher_best']:.2f}x vs {figures['teacher_best_run']}"
            + (f" (target {best}x)" if best else "")
            # Signed changes against the teacher: a student can gain SSIM (distillation on varied data).
            + f"; {'real scans' if figures['scored_on'] == 'real_scans' else 'every slice'}: "
            + f"PSNR {-figures['psnr_loss_db']:+.3f} dB (loss target {loss}), "
            + f"SSIM {-figures['ssim_loss']:+.4f}"
            + ("" if ssim_loss == float("inf") else f" (loss target {ssim_loss})")
            + (
                f" (every slice {-figures['all_psnr_loss_db']:+.3f} dB, {-figures['all_ssim_loss']:+.4f})"
                if figures["scored_on"] == "real_scans"
                else ""
            )
            + ("" if sharp is None else f", sharpness {sharp:.3f} of the teacher's")
            + ("" if sharpness is None else f" (target 1 +- {sharpness})")
            + ": "
            + ("met" if met else "MISSED")
        )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
