"""What folding the SR tail before the last sub-pixel shuffle buys (edgesr.models.fold), per shipped model.

    .venv/bin/python benchmarks/subpixel_fold.py [--models rdn-mr-x2,srgan-mr-x4,...] [--repeats 40]

Every shipped SR model (teachers and students) is timed at 256x256 output with its convolution to the
image as trained and folded (by default every tail, RDN's 3x3 too, ``--min-kernel 1``; edgesr itself
folds kernels of ``edgesr.models.fold.MIN_KERNEL`` and up, a choice these figures made), in torch FP32
and BF16 (autocast) and in OpenVINO at its default precision (BF16 on a CPU with BF16 units), each
(model, form, runtime) in a fresh worker process (:mod:`edgesr.bench.worker`) on the first
``--threads`` cores; the two forms of one model and runtime are timed back to back, so that they share
the machine's state. Printed: both p50s and their ratio, and the largest difference of the two forms'
outputs on one random input (relative to its range).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

DEFAULT_MODELS = (
    "rdn-mr-x2,rdn-mr-x4,rdn-ct-x2,srgan-mr-x4,rdn-mr-x2-edge,rdn-mr-x4-edge,rdn-ct-x2-edge,srgan-mr-x4-edge"
)


def main() -> int:
    import torch

    from edgesr.bench.devices import first_cores
    from edgesr.bench.timing import latency_inputs
    from edgesr.bench.worker import measure_isolated
    from edgesr.export.onnx import export_onnx
    from edgesr.models.fold import fold_subpixel_tail
    from edgesr.teachers import teacher_path
    from edgesr.train.checkpoint import load_for_inference

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-kernel", type=int, default=1, help="fold tails of at least this kernel size")
    args = parser.parse_args()

    print("| model | runtime | as trained p50 ms | folded p50 ms | speed-up | max difference / range |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models.split(","):
            folder = teacher_path(name)
            model, spec, _ = load_for_inference(folder)
            inputs = latency_inputs(spec, 256)
            with torch.no_grad():
                trained = model(*inputs.values())
                folded = fold_subpixel_tail(model, min_kernel=args.min_kernel)(*inputs.values())
            difference = float((folded - trained).abs().max()) / max(float(trained.abs().max()), 1e-12)
            files = {}
            for fold in (False, True):
                files[fold] = str(Path(scratch) / f"{name}-{fold}.onnx")
                form = fold_subpixel_tail(model, min_kernel=args.min_kernel) if fold else model
                export_onnx(form, spec, latency_inputs(spec, 64), files[fold], fold=False)
            for runtime, precision in (("torch", "fp32"), ("torch", "bf16"), ("openvino", "default")):
                p50 = {}
                for fold in (False, True):
                    request = {
                        "runtime": runtime, "precision": precision, "spec": spec.to_dict(),
                        "model": str(folder) if runtime == "torch" else files[fold], "fold": fold,
                        "fold_min_kernel": args.min_kernel,
                        "threads": args.threads, "size": 256, "repeats": args.repeats,
                        "cores": first_cores(args.threads),
                    }  # fmt: skip
                    p50[fold] = float(measure_isolated(request)["latency_ms"]["p50"])
                print(f"| {name} | {runtime} {precision} | {p50[False]:.2f} | {p50[True]:.2f} | "
                      f"{p50[False] / p50[True]:.2f}x | {difference:.1e} |")  # fmt: skip
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
