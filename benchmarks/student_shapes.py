"""Which RDN student shapes could reach issue 11's 10x bar? Latency of shapes, not of trained students.

    .venv/bin/python benchmarks/student_shapes.py [--shapes 16x6x4,16x3x4,...] [--repeats 20] [--threads 2]

A shape is ``FxDxC``: F channels between blocks and per dense layer (G0 = G), D residual dense blocks,
C layers per block (the teacher ``rdn_small`` is 32x6x4; the x2 RDN students shipped until 2026-11-30
were 16x6x4, ``rdn-mr-x2-edge`` is 16x2x4 since). Each shape is built with random weights (latency
does not depend on them), exported to ONNX as ``edgesr compress`` exports a student, and timed in
OpenVINO at its default precision (BF16 on a CPU with BF16 units) and in ONNX Runtime FP32, each in a
fresh worker process (:mod:`edgesr.bench.worker`, as the compress report times its runs), at 256x256
output. The reference is the shipped ``rdn-mr-x2`` teacher in torch FP32 and in OpenVINO at its
default, timed the same way in the same run. Printed: parameters, GMAC per output, both p50s and the
speed-ups against the teacher. Quality is not measured here: a shape that reaches the bar still has to
be distilled to within the gate.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

DEFAULT_SHAPES = "16x6x4,16x4x4,16x3x4,16x4x3,16x3x3,16x2x4,24x3x4,32x3x3"


def main() -> int:
    import torch

    from edgesr.bench.devices import first_cores
    from edgesr.bench.timing import latency_inputs
    from edgesr.bench.worker import measure_isolated
    from edgesr.compress.prune import count_macs_params
    from edgesr.export.build import fft_for
    from edgesr.export.onnx import export_onnx
    from edgesr.models.rdn import RDN
    from edgesr.teachers import teacher_path
    from edgesr.train.checkpoint import load_for_inference

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", default=DEFAULT_SHAPES)
    parser.add_argument("--teacher", default="rdn-mr-x2")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)

    folder = teacher_path(args.teacher)
    teacher, spec, _ = load_for_inference(folder)
    if spec.sr is None:
        print(f"{args.teacher} is not an SR model", file=sys.stderr)
        return 2
    example = tuple(latency_inputs(spec, 256).values())

    def timed(runtime: str, precision: str, model: str) -> float:
        request = {
            "runtime": runtime, "model": model, "spec": spec.to_dict(), "precision": precision,
            "threads": args.threads, "size": 256, "repeats": args.repeats, "cores": first_cores(args.threads),
        }  # fmt: skip
        return float(measure_isolated(request)["latency_ms"]["p50"])

    def exported(model: torch.nn.Module, path: Path) -> str:
        fft = fft_for(model, runtimes=["openvino", "onnxruntime"], precisions=["default"], default="matmul")
        export_onnx(model.eval(), spec, latency_inputs(spec, 64), path, fft=fft)
        return str(path)

    with tempfile.TemporaryDirectory() as scratch:
        teacher_onnx = exported(teacher, Path(scratch) / "teacher.onnx")
        teacher_torch = timed("torch", "fp32", str(folder))
        teacher_openvino = timed("openvino", "default", teacher_onnx)
        macs, params = count_macs_params(teacher, example)
        print(f"teacher {args.teacher}: {params / 1e6:.2f} M, {macs / 1e9:.2f} GMAC; torch FP32 "
              f"{teacher_torch:.1f} ms, OpenVINO default {teacher_openvino:.1f} ms")  # fmt: skip
        print()
        print("| shape FxDxC | params | GMAC | OpenVINO default ms | ONNX Runtime FP32 ms "
              "| vs teacher torch FP32 | vs teacher OpenVINO |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for shape in args.shapes.split(","):
            features, blocks, layers = (int(v) for v in shape.lower().split("x"))
            student = RDN(
                scale=spec.sr.scale, in_channels=1, features=features, blocks=blocks, layers=layers,
                growth=features, upsampler=spec.sr.upsampler,
            )  # fmt: skip
            macs, params = count_macs_params(student, example)
            onnx_file = exported(student, Path(scratch) / f"{shape}.onnx")
            openvino_ms = timed("openvino", "default", onnx_file)
            onnxruntime_ms = timed("onnxruntime", "fp32", onnx_file)
            print(f"| {shape} | {params / 1e6:.3f} M | {macs / 1e9:.2f} | {openvino_ms:.1f} | "
                  f"{onnxruntime_ms:.1f} | {teacher_torch / openvino_ms:.2f}x | "
                  f"{teacher_openvino / openvino_ms:.2f}x |")  # fmt: skip
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
