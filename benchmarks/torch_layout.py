"""torch on the CPU: the shipped models through `TorchPredictor` in torch's default (contiguous) layout
against the channels-last copy that `TorchPredictor` runs on the CPU since 2026-11-30.

    .venv/bin/python benchmarks/torch_layout.py [--models rdn-mr-x2,modl-r4,...] [--rounds 9] [--threads 2]

Both predictors of one model are timed interleaved in one process (each round runs each once; the
first round is a warm-up; the median is kept), on the harness's latency inputs at 256x256 output, so
the ratio is of one run on one machine state. Printed per model: both p50s, the ratio and the largest
difference between the two outputs relative to the output's range.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

DEFAULT_MODELS = (
    "rdn-mr-x2,rdn-mr-x2-edge,rdn-mr-x4,rdn-mr-x4-edge,rdn-ct-x2,rdn-ct-x2-edge,"
    "srgan-mr-x4,srgan-mr-x4-edge,modl-r4,deepcomplex-r4"
)


def main() -> int:
    from edgesr.bench.timing import latency_inputs
    from edgesr.pipeline import TorchPredictor
    from edgesr.teachers import teacher_path
    from edgesr.train.checkpoint import load_for_inference

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print("| model | default layout ms | channels-last ms | faster | max difference |")
    print("|---|---|---|---|---|")
    for name in args.models.split(","):
        model, spec, _ = load_for_inference(teacher_path(name))
        inputs = latency_inputs(spec, 256)
        predictors = {
            "contiguous": TorchPredictor(model, spec, "cpu", channels_last=False),
            "channels_last": TorchPredictor(model, spec, "cpu", channels_last=True),
        }
        times: dict[str, list[float]] = {label: [] for label in predictors}
        outputs: dict[str, torch.Tensor] = {}
        for round_index in range(args.rounds):
            for label, predictor in predictors.items():
                started = time.perf_counter()
                outputs[label] = predictor(inputs)
                if round_index:  # the first round warms up
                    times[label].append((time.perf_counter() - started) * 1000.0)
        default, channels_last = (statistics.median(times[label]) for label in predictors)
        reference = outputs["contiguous"]
        difference = float((reference - outputs["channels_last"]).abs().max()) / float(reference.abs().max())
        print(
            f"| `{name}` | {default:.0f} | {channels_last:.0f} | {default / channels_last:.2f}x "
            f"| {difference:.0e} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
