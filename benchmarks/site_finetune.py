"""What a site's fine-tune buys: a shipped MR teacher fine-tuned on one scanner's scans, scored on
held-out scans of that scanner and on everything else, through the commands a site runs
(``edgesr data prepare local=``, ``edgesr train init=``, ``edgesr evaluate``).

    .venv/bin/python benchmarks/site_finetune.py [--sources nibabel-epi,heudiconv-bold-epi] \\
        [--teacher rdn-mr-x2] [--steps 300] [--out runs/site-finetune]

Each source plays a site: its volume (a real brain EPI from another scanner than the training data,
one of the external sources) is cut into three slabs along the slice axis, two slices apart, and
written as the site's NIfTI files: the first half of its usable slices train, the next 15 % validate,
the rest test (whole slabs, as a site splits by scan; neighbouring slices never straddle a split).
The teacher is scored on the site's test slab, fine-tuned on the train slab (``rdn_small`` initialised
from the teacher, lr 1e-4, 32-pixel LR patches, batch 8, the training degradation without scanner
variety), and scored again there, on the default data set's test split (real scans) and on its
external split without the site's own source, to show what the fine-tune costs elsewhere.

This is a measurement, not a shipped model: the fine-tuned weights stay in ``--out``. It trains on
slices of an external source, so no model fine-tuned here may ever be scored as "external" on that
source again; the shipped teachers are not touched.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgesr.cli import main as edgesr  # noqa: E402
from edgesr.data.dataset import PreparedDataset  # noqa: E402
from edgesr.data.prepare import PrepareConfig, prepare_dataset, usable_slices  # noqa: E402
from edgesr.data.sources import get_source  # noqa: E402

GAP = 2  # slices between slabs, as the data set's split policy


def _slabs(usable: list[int]) -> dict[str, list[int]]:
    """Contiguous train / val / test slabs of the usable slices, ``GAP`` slices apart."""
    n = len(usable)
    n_train, n_val = round(0.5 * n), max(2, round(0.15 * n))
    train = usable[:n_train]
    val = usable[n_train + GAP : n_train + GAP + n_val]
    test = usable[n_train + 2 * GAP + n_val :]
    if not (train and val and test):
        raise SystemExit(f"{n} usable slices are too few for three slabs")
    return {"train": train, "val": val, "test": test}


def _write_site(source_name: str, folder: Path) -> tuple[Path, dict[str, list[int]]]:
    """The source's slabs as NIfTI files (``[H, W, S]`` on disk: edgesr reads slices along the third
    voxel axis) and the site's YAML listing them."""
    source = get_source(source_name)
    path = source.locate()
    if path is None:
        raise SystemExit(f"{source_name}: {source.package} is not installed (run `bash .ci/setup`)")
    loaded = source.load(path)
    slabs = _slabs(usable_slices(loaded.data))
    folder.mkdir(parents=True, exist_ok=True)
    slice_mm, row_mm, col_mm = loaded.spacing
    lines = ["builtin: false", "sources:"]
    for split, indices in slabs.items():
        file = folder / f"{split}.nii.gz"
        slab = np.ascontiguousarray(loaded.data[indices].transpose(1, 2, 0))
        nib.save(nib.Nifti1Image(slab, np.diag([row_mm, col_mm, slice_mm, 1.0])), file)
        lines.append(f"  - {{name: site-{split}, path: {file.name}, modality: MR, split: {split}}}")
    yaml = folder / "site.yaml"
    yaml.write_text("\n".join(lines) + "\n")
    return yaml, slabs


def _evaluate(model: list[str], *extra: str) -> dict:
    """``edgesr evaluate ... format=json``: the comparison on the real scans (gain over the best
    classical baseline, slices below it)."""
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        status = edgesr(["evaluate", *model, "format=json", *extra])
    if status != 0:
        raise SystemExit(f"edgesr evaluate {' '.join(model + list(extra))} failed ({status})")
    report = json.loads(captured.getvalue())
    (comparison,) = [c for c in report["comparison"] if c["task"] == "sr"]
    real = comparison.get("real_scans") or comparison
    return {
        "psnr_db": round(real.get("psnr_db", float("nan")), 3),
        "gain_db": round(real["gain_db_over_best_baseline"], 3),
        "best_baseline": real.get("best_baseline", comparison["best_baseline"]),
        "slices": real.get("slices", comparison.get("slices")),
        "below": real["slices_below_per_slice_best_baseline"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", default="nibabel-epi,heudiconv-bold-epi")
    parser.add_argument("--teacher", default="rdn-mr-x2")
    parser.add_argument("--model", default="rdn_small", help="the teacher's architecture preset")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default="runs/site-finetune")
    args = parser.parse_args()
    out = Path(args.out)
    prepare_dataset(PrepareConfig())  # the default data set, for the scores elsewhere
    teacher_folder = ROOT / "edgesr" / "weights" / args.teacher
    external_mr = [v["name"] for v in PreparedDataset().volumes("MR", "external")]
    results = []
    for name in args.sources.split(","):
        # The external split without the site itself: its slices were trained on here.
        elsewhere = "sources=[" + ",".join(n for n in external_mr if n != name) + "]"
        site = out / name
        yaml, slabs = _write_site(name, site / "scans")
        root = site / "data"
        if edgesr(["data", "prepare", f"root={root}", f"local={yaml}"]) != 0:
            raise SystemExit(f"{name}: edgesr data prepare failed")
        run = site / "run"
        started = time.perf_counter()
        train = [
            "train", f"model={args.model}", f"init={teacher_folder}", "data.modality=MR", "data.scale=2",
            f"data.root={root}", "data.patch=32", "data.batch_size=8", f"optim.steps={args.steps}",
            "optim.lr=1e-4", "optim.warmup=20", f"eval_every={max(1, args.steps // 3)}", "threads=2",
            f"out={run}", *(["resume=true"] if (run / "last").is_dir() else []),
        ]  # fmt: skip
        if edgesr(train) != 0:
            raise SystemExit(f"{name}: edgesr train failed")
        minutes = (time.perf_counter() - started) / 60
        row = {
            "site": name,
            "slabs": {k: len(v) for k, v in slabs.items()},
            "train_minutes": round(minutes, 1),
        }
        for label, model in (
            ("teacher", [f"model={args.teacher}"]),
            ("fine-tuned", [f"checkpoint={run}/best"]),
        ):
            row[label] = {
                "site_test": _evaluate(model, f"root={root}"),
                "default_test": _evaluate(model, "split=test"),
                "default_external": _evaluate(model, "split=external", elsewhere),
            }
        results.append(row)
        print(json.dumps(row, indent=2), flush=True)
    print("\n| site (train/val/test slices) | model | site test | default test, real | default external |")
    print("|---|---|---|---|---|")
    for row in results:
        for label in ("teacher", "fine-tuned"):
            cells = [
                f"{row[label][k]['gain_db']:+.2f} ({row[label][k]['below']} below)"
                for k in ("site_test", "default_test", "default_external")
            ]
            slabs = "/".join(str(row["slabs"][k]) for k in ("train", "val", "test"))
            print(f"| {row['site']} ({slabs}) | {label} | " + " | ".join(cells) + " |")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
