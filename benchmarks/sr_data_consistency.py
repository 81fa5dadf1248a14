"""Would k-space data consistency help the MR SR models? Each model as shipped against the same output
projected onto what the low-resolution image measured, side by side on the same slices.

    .venv/bin/python benchmarks/sr_data_consistency.py [--models rdn-mr-x4,rdn-mr-x2,srgan-mr-x4]
        [--noise 0,0.01,0.03] [--splits test,external] [--root DIR]

An MR low-resolution image is the magnitude of the central ``1/s`` of k-space. Two projections of the
model's output ``y`` are tried, both in the spectrum's acquired band only (nothing above it changes):

* ``hard``: the band's complex image ``z`` (of ``y``) takes the measured magnitude with its own phase,
  ``z <- |lr| * z / |z|``: the output then reproduces the input exactly when it is truncated again.
* ``soft``: the same step scaled by a per-image weight ``e / (e + n)``, where ``n`` is the input's
  noise variance (Immerkaer's Laplacian estimate) and ``e`` the band's mismatch beyond it: a noisy
  input is trusted less.

Scored like ``edgesr evaluate`` (the protocol's slices, degradations and baselines), with complex
Gaussian noise of each ``--noise`` std added to the low-resolution images. Printed per model, noise
and split: the gain over the best baseline on real scans and the slices below it. Measured 2026-11-30
(benchmarks/RESULTS.md, "Teachers on other scanners"; 2 min on 2 cores): ``hard`` gains 0.03-0.12 dB
on noise-free LR images and loses 0.08-0.16 dB at noise 0.03 (already 0.02-0.13 dB on the test split
at 0.01), where the network's own in-band denoising is worth more; ``soft`` never loses and gains at
most 0.04 dB. Neither ships.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
import torch.nn.functional as F

from edgesr.physics.degrade import _center_start
from edgesr.physics.fft import fft2c_complex, ifft2c_complex

LAPLACIAN = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])[None, None]


def project(sr: torch.Tensor, lr: torch.Tensor, scale: int, *, soft: bool) -> torch.Tensor:
    """``sr [1, 1, H, W]`` with its acquired band's magnitude moved to ``lr [1, 1, h, w]``'s."""
    (height, width), (h, w) = sr.shape[-2:], lr.shape[-2:]
    top, left = _center_start(height, h), _center_start(width, w)
    kspace = fft2c_complex(sr.to(torch.complex64))
    band = ifft2c_complex(kspace[..., top : top + h, left : left + w]) / scale  # the LR grid's image
    step = (lr - band.abs()) * torch.sgn(band)
    if soft:
        # Immerkaer (1996): the kernel's squared weights sum to 36, so white noise of std s gives a
        # response of std 6 s; the median absolute response (x 1.4826) estimates that robustly.
        noise = (F.conv2d(lr.float(), LAPLACIAN).abs().median() * 1.4826 / 6) ** 2
        mismatch = ((lr - band.abs()) ** 2).mean()
        excess = (mismatch - noise).clamp(min=0)
        step = step * excess / (excess + noise + 1e-12)
    kspace[..., top : top + h, left : left + w] = fft2c_complex(band + step) * scale
    return ifft2c_complex(kspace).real.clamp(min=0)


def projected(method: Any, scale: int, *, soft: bool) -> Any:
    """An SR method whose output is :func:`project`-ed onto its input."""
    return lambda lr, s, kind: project(method(lr, s, kind), lr, scale, soft=soft)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="rdn-mr-x4,rdn-mr-x2,srgan-mr-x4")
    parser.add_argument("--noise", default="0,0.01,0.03", help="complex noise std of the LR images")
    parser.add_argument("--splits", default="test,external")
    parser.add_argument("--root", default="", help="data cache folder (default: $EDGESR_DATA or ~/.cache)")
    args = parser.parse_args()

    from edgesr.data.dataset import open_or_prepare
    from edgesr.evaluate import compare, model_sr_method, score_sr, sr_baseline_methods, sr_pairs
    from edgesr.pipeline import TorchPredictor
    from edgesr.teachers import teacher_path
    from edgesr.train.checkpoint import load_for_inference

    dataset = open_or_prepare(args.root)
    print(f"data set fingerprint {dataset.fingerprint['id']}")
    print("| model | noise | split | as shipped | hard | soft |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model, spec, _ = load_for_inference(teacher_path(name))
        if spec.sr is None or spec.sr.degradation != "mr-kspace":
            print(f"{name}: not an MR k-space SR model; skipped", file=sys.stderr)
            continue
        scale, kind = spec.sr.scale, spec.sr.degradation
        shipped = model_sr_method(spec, TorchPredictor(model, spec))

        variants = {
            "as shipped": shipped,
            "hard": projected(shipped, scale, soft=False),
            "soft": projected(shipped, scale, soft=True),
        }
        for noise in (float(n) for n in args.noise.split(",")):
            for split in args.splits.split(","):
                pairs = sr_pairs(
                    dataset, modality="MR", scale=scale, split=split, degradation=kind, noise_std=noise
                )
                scores = score_sr(sr_baseline_methods() | variants, pairs, scale=scale, degradation=kind)
                baselines = [s for s in scores if s.method not in variants]
                cells = []
                for label in variants:
                    real = compare([*baselines, next(s for s in scores if s.method == label)], label)
                    gain = real["real_scans"]
                    below = gain["slices_below_per_slice_best_baseline"]
                    mean = gain["gain_db_over_best_baseline"]
                    cells.append(f"{mean:+.3f} ({below} of {gain['slices']} below)")
                print(f"| {name} | {noise:g} | {split} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
