"""How the shipped models hold up on scans they never saw: the in-domain test split against the external
split, per source, next to the classical baselines (issue 13's before/after table).

    .venv/bin/python benchmarks/generalisation.py [--models rdn-mr-x2,rdn-ct-x2] [--max-slices 0]
        [--splits test,external] [--root DIR] [--out runs/generalisation.json]

Every model is scored by `edgesr.evaluate.evaluate_model`, the code `edgesr evaluate` runs, on the
test split and on the external split of the prepared data set (`edgesr data info` lists both), with
the baselines of the same run. Printed per model and split: the gain over the best baseline on the
real scans (templates left out), then per source with the slices below the per-slice best baseline.
The JSON keeps the data set's fingerprint beside the figures; figures of two runs compare only when
their fingerprints match. Recon models are scored at R=4 (random mask, simulated maps).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ("rdn-mr-x2", "rdn-mr-x4", "rdn-ct-x2", "srgan-mr-x4", "modl-r4", "deepcomplex-r4")


def _rows(name: str, split: str, report: dict[str, Any]) -> list[str]:
    rows = []
    for comparison in report["comparison"]:
        real = comparison.get("real_scans")
        if real is not None:
            rows.append(
                f"| {name} | {split} | **real scans** | {real['slices']} | {real['psnr_db']:.2f} dB, "
                f"**{real['gain_db_over_best_baseline']:+.2f}** vs {real['best_baseline']} | "
                f"{real['slices_below_per_slice_best_baseline']} |"
            )
        for source, gain in comparison["by_source"].items():
            label = f"{source} (template)" if gain["template"] else source
            rows.append(
                f"| {name} | {split} | {label} | {gain['slices']} | {gain['psnr_db']:.2f} dB, "
                f"{gain['gain_db_over_best_baseline']:+.2f} vs {gain['best_baseline']} | "
                f"{gain['slices_below_per_slice_best_baseline']} |"
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--max-slices", type=int, default=0, help="slices per volume (0: all)")
    parser.add_argument("--splits", default="test,external", help="which splits to score")
    parser.add_argument("--root", default="", help="data cache folder (default: $EDGESR_DATA or ~/.cache)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "generalisation.json"))
    args = parser.parse_args()

    from edgesr._io import write_json_atomic
    from edgesr.data.dataset import open_or_prepare
    from edgesr.evaluate import ReconProtocol, evaluate_model, has_slices
    from edgesr.pipeline import TorchPredictor
    from edgesr.teachers import read_card, teacher_path
    from edgesr.train.checkpoint import load_for_inference

    dataset = open_or_prepare(args.root)
    results: dict[str, Any] = {"data_fingerprint": dataset.fingerprint, "models": {}}
    lines = [
        "| model | split | source | slices | PSNR, gain over the best baseline | slices below |",
        "|---|---|---|---|---|---|",
    ]
    for name in args.models.split(","):
        model, spec, meta = load_for_inference(teacher_path(name))
        modality = spec.intensity.modality if spec.sr is not None else "MR"
        sha256 = read_card(teacher_path(name)).get("weights", {}).get("sha256", "")
        results["models"][name] = {"weights_sha256": sha256, "step": meta.get("step"), "splits": {}}
        for split in args.splits.split(","):
            if not has_slices(dataset, split, modality):
                print(f"{name}: no {modality} slices in the {split} split; skipped", file=sys.stderr)
                continue
            started = time.perf_counter()
            report = evaluate_model(
                spec, TorchPredictor(model, spec), dataset, label=name, split=split,
                max_slices=args.max_slices, recon=ReconProtocol(accelerations=(4.0,)),
            )  # fmt: skip
            results["models"][name]["splits"][split] = report
            lines += _rows(name, split, report)
            print(f"{name} {split}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
            write_json_atomic(args.out, results)  # after every model: a long run keeps what it measured
    print(f"data set fingerprint {dataset.fingerprint['id']}")
    print("\n".join(lines))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
