"""Would a shallower RDN student keep the gate? A probe of depth pruning, which edgesr does not build yet.

    .venv/bin/python benchmarks/depth_probe.py [--keep 0,1,2] [--steps 3000] [--lr 1e-3] [--out DIR]

`benchmarks/student_shapes.py` measured that issue 11's 10x bar needs about half the depth of the
shipped RDN students as well as half the width (16x3x4: 11.3x in OpenVINO BF16). This probe makes
such a student from the shipped ``rdn-mr-x2-edge`` (16 channels, 6 blocks of 4 layers): it keeps the
dense blocks ``--keep`` and slices the global fusion's 1x1 inputs to those blocks' outputs (every other
layer keeps its weights), then distils it from ``rdn-mr-x2`` with ``edgesr.compress.distill.distill``
(the recipe stages' function: the teacher's training distribution, BF16 on CPUs with BF16 units) and
scores the teacher, the shipped student, the shallow student before and after distillation on the
test split (6 slices per volume, as the quick start), over every slice and over the real scans.
Nothing is saved but the run folder: the shallow student is not a registered shape and does not ship.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    import torch
    from rich.console import Console
    from safetensors.torch import load_file

    from edgesr.compress.distill import DistillSettings, distill, teacher_training_data
    from edgesr.data.dataset import open_or_prepare
    from edgesr.data.sources import is_template
    from edgesr.evaluate import real_scan_scores, score_predictor
    from edgesr.models.rdn import RDN
    from edgesr.pipeline import TorchPredictor
    from edgesr.teachers import teacher_path
    from edgesr.train.checkpoint import load_for_inference
    from edgesr.train.distributed import DistEnv

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep", default="0,1,2", help="the dense blocks kept, by index")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--slices", type=int, default=6, help="test slices per volume")
    parser.add_argument("--out", default="", help="the distillation's run folder (default: temporary)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    keep = [int(k) for k in args.keep.split(",")]

    teacher, spec, _ = load_for_inference(teacher_path("rdn-mr-x2"))
    wide, _, _ = load_for_inference(teacher_path("rdn-mr-x2-edge"))
    width = wide.shallow2.out_channels
    layers = len(wide.blocks[0].layers)
    if any(not 0 <= k < len(wide.blocks) for k in keep):
        print(f"--keep: blocks are numbered 0..{len(wide.blocks) - 1}", file=sys.stderr)
        return 2
    shallow = RDN(scale=2, in_channels=1, features=width, blocks=len(keep), layers=layers, growth=width,
                  upsampler="zero-fill")  # fmt: skip
    source, state = wide.state_dict(), {}
    for key in shallow.state_dict():
        if key.startswith("blocks."):  # block i of the shallow student is block keep[i] of the wide one
            index, rest = key.split(".", 2)[1:]
            state[key] = source[f"blocks.{keep[int(index)]}.{rest}"]
        elif key == "global_fusion.0.weight":  # its inputs are the concatenated block outputs
            fusion = source[key]
            state[key] = torch.cat([fusion[:, width * k : width * (k + 1)] for k in keep], dim=1)
        else:
            state[key] = source[key]
    shallow.load_state_dict(state)

    dataset = open_or_prepare("", Console(stderr=True))

    def scored(model: torch.nn.Module) -> dict[str, float]:
        score = score_predictor(
            spec, TorchPredictor(model, spec, "cpu"), dataset, split="test", max_slices=args.slices
        )
        real = real_scan_scores(score, [name for name in score["by_source"] if is_template(name)])
        if real is None:
            raise SystemExit("the test split has no real scan")
        per_source = {name: figures["psnr_db"] for name, figures in score["by_source"].items()}
        return {"psnr": score["psnr"], "ssim": score["ssim"], "real_psnr": real["psnr"],
                "real_ssim": real["ssim"], **per_source}  # fmt: skip

    rows = {"teacher": scored(teacher), "rdn-mr-x2-edge (16x6x4)": scored(wide)}
    name = f"{width}x{len(keep)}x{layers}, blocks {args.keep}"
    rows[f"{name}, before distillation"] = scored(shallow)
    noise_max, variety = teacher_training_data(teacher_path("rdn-mr-x2"))
    settings = DistillSettings(
        steps=args.steps, lr=args.lr, warmup=50, batch_size=8, patch=48, eval_every=max(args.steps // 4, 1),
        noise_max=noise_max, variety=variety,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        started = time.time()
        distill(
            teacher, shallow, spec=spec, student_name="rdn-depth-probe", student_options={}, dataset=dataset,
            settings=settings, out=out, env=DistEnv(0, 1, torch.device("cpu")), console=Console(stderr=True),
        )  # fmt: skip
        shallow.load_state_dict(load_file(str(out / "best" / "model.safetensors")))
        seconds = time.time() - started
    rows[f"{name}, {args.steps} steps ({seconds / 60:.1f} min)"] = scored(shallow)

    reference = rows["teacher"]
    print(json.dumps(rows, indent=1))
    print("| model | every slice dB | SSIM | real scans dB | SSIM |")
    print("|---|---|---|---|---|")
    for label, row in rows.items():
        print(f"| {label} | {row['psnr']:.2f} ({row['psnr'] - reference['psnr']:+.3f}) | "
              f"{row['ssim']:.4f} ({row['ssim'] - reference['ssim']:+.4f}) | "
              f"{row['real_psnr']:.2f} ({row['real_psnr'] - reference['real_psnr']:+.3f}) | "
              f"{row['real_ssim']:.4f} ({row['real_ssim'] - reference['real_ssim']:+.4f}) |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
