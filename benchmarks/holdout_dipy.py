"""A second hold-out, outside edgesr's data set: the MR SR models on real brain MR that dipy ships as
test data, which no edgesr model trained on, was selected on, or was scored on before 2026-11-30.

    pip download --no-deps dipy==1.12.1 -d /tmp/dipy        # once, from the package registry
    .venv/bin/python benchmarks/holdout_dipy.py --wheel /tmp/dipy/dipy-1.12.1-*.whl \\
        [--models rdn-mr-x2,rdn-mr-x4,runs/NAME/best,...] [--out runs/holdout-dipy.json]

``--models`` takes shipped names and checkpoint folders (anything with a ``/``).

Why apart from the external split: the external split was looked at while the teachers were
re-trained (its figures were the issue's targets), so it is no longer blind. These files were not
(measurement only: nothing is trained, chosen or tuned on them, and adding them to the data set would
make them one more split to tune to). dipy (BSD-3) is not a dependency of edgesr: the files are read
from its wheel (or an installed dipy) and never copied into the repository.

The volumes (all real brain MR, scanner details not documented by dipy): ``S0_10slices`` (a b=0
diffusion volume, 128x128x10 at 2 mm, skull-stripped), ``aniso_vox`` (58x58x24 at 4x4x5 mm; the 12
middle slices), ``test_piesno`` (a diffusion volume with its noise floor, 96x96x14; the 8 middle
slices) and ``t1_coronal_slice`` (one skull-stripped T1 slice, 256x256, stored as 0..1). Each slice
is degraded and scored exactly as ``edgesr evaluate`` does (intensity / volume maximum, the model's own
degradation, border of ``scale`` pixels left out), next to the classical baselines of the same run;
slices below 5 % of the volume maximum (outside the head) are skipped. Printed per model and volume:
the gain over the best baseline and how many slices are below the per-slice best.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import io
import json
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = "rdn-mr-x2,rdn-mr-x4,srgan-mr-x4,rdn-mr-x2-edge,rdn-mr-x4-edge,srgan-mr-x4-edge"


def _reader(wheel: str) -> Callable[[str], bytes]:
    """Reads ``dipy/data/files/<name>`` from the wheel given, else from an installed dipy."""
    if wheel:
        archive = zipfile.ZipFile(wheel)
        return lambda name: archive.read(f"dipy/data/files/{name}")
    spec = importlib.util.find_spec("dipy")
    if spec is None or spec.origin is None:
        raise SystemExit("no dipy: pass --wheel (pip download --no-deps dipy==1.12.1 -d DIR) or install dipy")
    folder = Path(spec.origin).parent / "data" / "files"
    return lambda name: (folder / name).read_bytes()


def _nifti(data: bytes) -> np.ndarray:
    holder = nib.FileHolder(fileobj=io.BytesIO(gzip.decompress(data)))
    image = nib.Nifti1Image.from_file_map({"header": holder, "image": holder})
    return np.asanyarray(image.dataobj).astype(np.float32)


def load_volumes(read: Callable[[str], bytes]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``{label: [S, H, W] float32}`` of axial (or coronal) slices, and each file's sha256."""
    files = ("S0_10slices.nii.gz", "aniso_vox.nii.gz", "test_piesno.nii.gz", "t1_coronal_slice.npy")
    raw = {name: read(name) for name in files}
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in raw.items()}
    volumes = {
        "S0_10slices (b=0, 128x128, 2 mm)": np.transpose(_nifti(raw[files[0]])[..., 0], (2, 1, 0)),
        "aniso_vox (58x58, 4x4x5 mm)": np.transpose(_nifti(raw[files[1]]), (2, 1, 0))[6:18],
        "test_piesno (96x96)": np.transpose(_nifti(raw[files[2]]), (2, 1, 0))[3:11],
        "t1_coronal_slice (256x256)": np.load(io.BytesIO(raw[files[3]]), allow_pickle=False).astype(
            np.float32
        )[None],
    }
    return volumes, hashes


def main() -> int:
    from edgesr.evaluate import compare, model_sr_method, score_sr, sr_baseline_methods
    from edgesr.physics.degrade import crop_to_multiple, degrade
    from edgesr.pipeline import TorchPredictor
    from edgesr.teachers import teacher_path
    from edgesr.train.checkpoint import load_for_inference

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--wheel", default="", help="a dipy wheel (default: the installed dipy)")
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "runs" / "holdout-dipy.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    volumes, hashes = load_volumes(_reader(args.wheel))
    results: dict[str, dict[str, dict[str, object]]] = {}
    print("| model | volume | slices | gain over the best baseline | slices below | worst slice |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model, spec, _ = load_for_inference(Path(name) if "/" in name else teacher_path(name))
        if spec.sr is None or spec.intensity.modality != "MR":
            print(f"{name}: not an MR SR model; skipped", file=sys.stderr)
            continue
        scale, kind = spec.sr.scale, spec.sr.degradation
        methods = sr_baseline_methods() | {name: model_sr_method(spec, TorchPredictor(model, spec))}
        results[name] = {}
        for label, volume in volumes.items():
            peak = float(volume.max())
            pairs = []
            for index, plane in enumerate(volume):
                if plane.max() < 0.05 * peak:
                    continue
                hr = crop_to_multiple(torch.from_numpy(plane / peak)[None, None], scale)
                pairs.append((degrade(hr, scale, kind), hr, f"{label}:{index}"))
            comparison = compare(score_sr(methods, pairs, scale=scale, degradation=kind), name)
            results[name][label] = {
                key: comparison[key]
                for key in (
                    "best_baseline",
                    "gain_db_over_best_baseline",
                    "slices_below_per_slice_best_baseline",
                )
            } | {"slices": len(pairs)}
            print(
                f"| {name} | {label} | {len(pairs)} | {comparison['gain_db_over_best_baseline']:+.2f} dB vs "
                f"{comparison['best_baseline']} | {comparison['slices_below_per_slice_best_baseline']} | "
                f"{comparison['min_gain_db_per_slice']:+.2f} dB |",
                flush=True,
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"files_sha256": hashes, "models": results}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
