"""MoDL's speed / quality curve over its solver budget (issue 11's `modl_r4_edge` target: 3x at <= 0.3 dB).

    .venv/bin/python benchmarks/modl_cg_curve.py [--checkpoint LABEL=DIR ...] [--rounds 3] [--bf16]
        [--configs 10x10,10x4] [--compile default]

The shipped `modl-r4` teacher's own weights run at other unroll counts (K) and CG steps per
data-consistency solve (no training: the denoiser is shared across unrolls, so any K and CG step count
runs), plus any trained students given with ``--checkpoint``. For each: PSNR/SSIM on the test split
(R=4, simulated maps, 4 slices per volume, per source), and the torch p50 at 256x256 with 8 coils
on 2 threads, timed interleaved in one process (each round times every model once, ``--rounds``
rounds, the median kept, in malloc's steady state), so the ratios to the teacher are of one run on
one machine state. Every
model runs through :class:`~edgesr.pipeline.TorchPredictor` (channels-last on the CPU), as edgesr
runs it; ``--bf16`` adds each model in BF16 autocast (the denoiser's convolutions in BF16, the
solver in FP32), scored and timed the same way; ``--compile MODE`` adds each model under
``torch.compile`` in that mode (TorchInductor; compiled on the warm-up call, outside the timing).
``--configs`` picks the (unrolls x CG steps) settings; the teacher's 10x10 is always run. The reference
is the teacher in FP32, eager.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

CONFIGS = [(10, 10), (10, 5), (10, 4), (10, 3), (10, 2), (5, 10), (4, 5)]  # (unrolls, CG steps)


def main() -> int:
    from edgesr.bench.worker import STEADY_MALLOC

    if any(os.environ.get(key) != value for key, value in STEADY_MALLOC.items()):
        # Timed in malloc's steady state, as edgesr's timing worker does (see STEADY_MALLOC): glibc reads
        # these at start-up, so the benchmark starts again with them.
        os.execve(sys.executable, [sys.executable, *sys.argv], os.environ | STEADY_MALLOC)
    from edgesr.bench.timing import latency_inputs, machine_info
    from edgesr.data.dataset import open_or_prepare
    from edgesr.evaluate import score_predictor
    from edgesr.pipeline import TorchPredictor
    from edgesr.teachers import teacher_path
    from edgesr.train.checkpoint import load_for_inference

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", default=[], help="LABEL=DIR of a trained student")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="also run every model in BF16 autocast")
    parser.add_argument("--configs", default="", help="UNROLLSxCG,... (default: the full curve)")
    parser.add_argument("--compile", default="", help="also run every model under torch.compile in this mode")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    teacher, spec, _ = load_for_inference(teacher_path("modl-r4"))
    models: dict[str, torch.nn.Module] = {}
    configs = CONFIGS
    if args.configs:
        configs = [(10, 10)] + [
            (int(k), int(c)) for k, _, c in (item.partition("x") for item in args.configs.split(","))
        ]
        configs = list(dict.fromkeys(configs))
    for unrolls, cg in configs:
        model = copy.deepcopy(teacher)
        model.iterations, model.cg_iterations = unrolls, cg
        models[f"K={unrolls}, CG={cg}" + (" (teacher)" if (unrolls, cg) == (10, 10) else "")] = model
    for item in args.checkpoint:
        label, _, folder = item.rpartition("=")
        models[label], _, _ = load_for_inference(Path(folder))
    precisions = ["fp32", "bf16"] if args.bf16 else ["fp32"]
    if args.compile:
        # Dynamo keeps 8 compiled versions of a function (MoDL.forward here) per process by default and
        # runs it eagerly past them; the models here (unroll and CG counts, precisions, the test slices'
        # sizes) need more, or the "compiled" rows would time eager code.
        torch._dynamo.config.recompile_limit = 64
    predictors = {}
    for mode in ["", args.compile] if args.compile else [""]:
        for precision in precisions:
            for label, model in models.items():
                name = f"{label}, {precision}" + (f", compiled ({mode})" if mode else "")
                predictors[name] = TorchPredictor(model, spec, precision=precision, compile_mode=mode)

    dataset = open_or_prepare("")
    scores = {}
    for label, predictor in predictors.items():
        scored = score_predictor(spec, predictor, dataset, split="test", max_slices=4)
        scores[label] = scored
        print(f"scored {label}: {scored['psnr']:.2f} dB", flush=True)

    inputs = latency_inputs(spec, 256)
    times: dict[str, list[float]] = {label: [] for label in predictors}
    for predictor in predictors.values():
        predictor(inputs)  # warm-up
    for _ in range(args.rounds):
        for label, predictor in predictors.items():
            started = time.perf_counter()
            predictor(inputs)
            times[label].append((time.perf_counter() - started) * 1000.0)

    teacher_label = next(label for label in predictors if "teacher" in label and label.endswith("fp32"))
    reference = statistics.median(times[teacher_label])
    base = scores[teacher_label]
    print(f"\n{machine_info()}")
    print("| model | torch p50 ms | speed-up | PSNR dB | vs teacher | real scans vs teacher | SSIM |")
    print("|---|---|---|---|---|---|---|")
    for label in predictors:
        p50 = statistics.median(times[label])
        real = [s for s in scores[label]["by_source"] if not s.startswith("mni152")]
        real_delta = statistics.mean(
            scores[label]["by_source"][s]["psnr_db"] - base["by_source"][s]["psnr_db"] for s in real
        )
        print(
            f"| {label} | {p50:.0f} | {reference / p50:.2f}x | {scores[label]['psnr']:.2f} | "
            f"{scores[label]['psnr'] - base['psnr']:+.2f} | {real_delta:+.2f} | {scores[label]['ssim']:.4f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
