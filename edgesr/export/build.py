"""``export_model``: a torch model and its spec -> one verified artifact folder per precision of a target.

The steps, for a target profile (:mod:`edgesr.export.targets`):

1. the model is exported once to ONNX with the dynamo exporter (:func:`edgesr.export.onnx.export_onnx`);
2. per precision, the runtime's file is made from it: the ONNX itself (ONNX Runtime FP32), a QDQ ONNX
   (ONNX Runtime INT8), an OpenVINO IR (FP32 weights, compiled at the artifact's precision) or an
   NNCF-quantized IR (OpenVINO INT8);
3. each is verified against the torch module on the pipeline's inputs from real test slices
   (:mod:`edgesr.export.verify`): FP32 by parity, the rest by PSNR/SSIM within the gate;
4. each gets its ``manifest.json``; ``export.json`` at the top sums up the export.

Everything is built in a staging folder beside ``out`` that takes ``out``'s place only when every
precision passed: a failed verification leaves no artifact that looks usable, and an earlier export in
``out`` stays whole until the new one is complete. INT8 files are calibrated on training slices (never
the test slices they are verified on) with the model family's default float scope (first and last
convolutions, the upsampler's neighbours; data consistency and FFTs are never quantized), or, for a
shipped student, with the settings its model card records (:func:`int8_plan`).

Layout::

    out/export.json            the target, the source model, per precision the figures and seconds
    out/fp32/model.onnx        (cpu-onnxruntime) + manifest.json
    out/bf16/model.xml, .bin   (cpu-openvino)    + manifest.json
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from edgesr._io import replace_folder, write_json_atomic
from edgesr.bench.timing import latency_inputs, runtime_versions
from edgesr.data.dataset import PreparedDataset
from edgesr.errors import ConfigError
from edgesr.export.artifact import runtime_predictor
from edgesr.export.manifest import write_manifest
from edgesr.export.targets import ExportTarget
from edgesr.export.verify import check_parity, check_quality, compare_outputs, quality
from edgesr.pipeline import TorchPredictor
from edgesr.spec import ModelSpec

SUMMARY_FILE = "export.json"
ENTRIES = {"onnxruntime": "model.onnx", "openvino": "model.xml"}
CALIBRATION_SLICES = 32  # training slices for INT8 calibration (what the compress recipes use)


def export_model(
    model: nn.Module,
    spec: ModelSpec,
    *,
    target: ExportTarget,
    target_name: str,
    out: str | Path,
    dataset: PreparedDataset,
    source: Mapping[str, Any],
    threads: int = 0,
    card_quantization: Mapping[str, Any] | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Exports ``model`` for ``target``; returns the summary also written as ``out/export.json``.

    Args:
        model: the float torch model (eval mode is set for the export and restored after).
        spec: its contract (input names and layouts, intensity convention, scale or coils).
        target: the profile: runtime, precisions, shapes, FFT form and verification tolerances.
        target_name: the profile's name, recorded in every manifest.
        out: the folder of the export: one sub-folder per precision.
        dataset: the prepared data: test slices verify, training slices calibrate INT8.
        source: where the model came from (model name, checkpoint sha256, teacher, recipe).
        threads: runtime threads for verification (0: the runtime's default).
        card_quantization: a student card's ``quantization`` section: its INT8 files keep the card's
            float scope, calibration and bias correction (see :func:`int8_plan`).

    Raises:
        ConfigError: ``out`` holds files that are not an earlier export; the target needs what this
            machine cannot build (TensorRT engines, fixed shapes).
        VerificationError: an artifact does not match PyTorch; nothing is left in ``out``.
    """
    console = console or Console(stderr=True)
    out = Path(out)
    _check_out(out)
    _check_buildable(target, target_name)
    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)  # a leftover of an interrupted export of this out=
    work = staging / "_work"
    work.mkdir(parents=True)
    reference = TorchPredictor(model.float().cpu().eval(), spec, device="cpu")
    try:
        started = time.perf_counter()
        with console.status(f"exporting {source.get('model', 'the model')} to ONNX (dynamo exporter)"):
            from edgesr.export.onnx import export_onnx

            onnx_path = export_onnx(model, spec, latency_inputs(spec, 64), work / "model.onnx", dynamic=True)
        onnx_seconds = time.perf_counter() - started
        with console.status(f"recording the network inputs of {target.verify.slices} test slices"):
            inputs = _network_inputs(spec, reference, dataset, slices=target.verify.slices, split="test")
        calibrations: dict[int, list[dict[str, np.ndarray]]] = {}
        plan: Int8Plan | None = None
        if "int8" in target.precisions:
            import onnx

            graph = onnx.load(str(onnx_path), load_external_data=False)
            plan = int8_plan(target.runtime, graph, spec, card_quantization)
        artifacts: dict[str, Any] = {}
        for precision in target.precisions:
            started = time.perf_counter()
            folder = staging / precision
            label = f"{target_name} {precision}"
            with console.status(f"building the {label} artifact"):
                calibration: list[dict[str, np.ndarray]] = []
                if precision == "int8" and plan is not None:
                    slices = plan.calibration_slices
                    if slices not in calibrations:
                        calibrations[slices] = _network_inputs(
                            spec, reference, dataset, slices=slices, split="train"
                        )
                    calibration = calibrations[slices]
                build_seconds = _build(
                    target.runtime,
                    precision,
                    onnx_path,
                    folder,
                    calibration,
                    plan if precision == "int8" else None,
                )
            with console.status(f"verifying the {label} artifact against PyTorch"):
                verification = _verify(
                    target, precision, spec, reference, folder, dataset, inputs, threads=threads, label=label
                )
            if precision == "int8" and plan is not None:
                verification["int8"] = dataclasses.asdict(plan) | {"keep_fp": list(plan.keep_fp)}
            manifest = write_manifest(
                folder, target=target_name, runtime=target.runtime, precision=precision,
                entry=ENTRIES[target.runtime], spec=spec, source=source, verification=verification,
                versions={"torch": torch.__version__, **runtime_versions()},
            )  # fmt: skip
            artifacts[precision] = {
                "folder": precision,
                "files": sorted(manifest.files),
                "build_seconds": round(build_seconds, 2),
                "seconds": round(time.perf_counter() - started, 2),
                "verification": verification,
            }
            console.print(f"{label}: verified ({_verdict(verification)})")
        shutil.rmtree(work)
        summary = {
            "target": target_name,
            "profile": dataclasses.asdict(target),
            "source": dict(source),
            "spec": spec.to_dict(),
            "onnx_export_seconds": round(onnx_seconds, 2),
            "artifacts": artifacts,
            "versions": {"torch": torch.__version__, **runtime_versions()},
        }
        write_json_atomic(staging / SUMMARY_FILE, summary)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_folder(staging, out)
    return summary


@dataclasses.dataclass(frozen=True)
class Int8Plan:
    """How an INT8 file is made: the convolutions kept in float, calibration slices, bias correction."""

    keep_fp: tuple[str, ...]
    calibration_slices: int
    bias_correction: bool
    origin: str  # "card" (the student's chosen attempt) or "default scope"
    note: str = ""


def int8_plan(
    runtime: str, graph: Any, spec: ModelSpec, card_quantization: Mapping[str, Any] | None
) -> Int8Plan:
    """The student card's INT8 settings for ``runtime`` when it has them, else the family's default.

    A card whose chosen attempt was QAT gives its scope and calibration, applied here as post-training
    quantization: QAT weights are trained, and only the card's ``rebuild_command`` retrains them.

    Raises:
        ConfigError: the card names convolutions that the exported graph does not have.
    """
    entry = (card_quantization or {}).get(runtime)
    if not isinstance(entry, Mapping) or not isinstance(entry.get("attempt"), Mapping):
        from edgesr.compress.quantize import default_scope

        keep = tuple(default_scope(spec).resolve(graph))
        return Int8Plan(keep, CALIBRATION_SLICES, False, "default scope")
    attempt = entry["attempt"]
    convs = {node.name for node in graph.graph.node if node.op_type == "Conv"}
    unknown = sorted(set(attempt["keep_fp"]) - convs)
    if unknown:
        raise ConfigError(
            f"the model card keeps {', '.join(unknown)} in float for {runtime}, but the exported graph has "
            "no such convolution (exported by another torch version?); re-run the card's rebuild_command"
        )
    note = ""
    if attempt.get("remedy") == "qat":
        note = "the card chose QAT; this file is PTQ with the card's scope (its rebuild_command retrains QAT)"
    return Int8Plan(
        tuple(attempt["keep_fp"]), int(attempt["calibration_slices"]), bool(attempt.get("bias_correction")),
        "card", note,
    )  # fmt: skip


def _check_out(out: Path) -> None:
    """``out`` is new, empty, or an earlier export (replaced whole at the end); never someone's files."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} is a file; choose a folder for the export")
    if out.is_dir() and any(out.iterdir()) and not (out / SUMMARY_FILE).is_file():
        raise ConfigError(f"out={out} holds files that are not an edgesr export; choose another out=")


def _check_buildable(target: ExportTarget, name: str) -> None:
    if target.runtime not in ENTRIES:
        raise ConfigError(
            f"target {name}: {target.runtime} artifacts cannot be built on this machine (edgesr builds "
            f"{' and '.join(ENTRIES)} artifacts here)"
        )
    if not target.dynamic_shapes:
        raise ConfigError(f"target {name}: fixed-shape exports are built only for TensorRT targets")


def _network_inputs(
    spec: ModelSpec, reference: TorchPredictor, dataset: PreparedDataset, *, slices: int, split: str
) -> list[dict[str, np.ndarray]]:
    from edgesr.compress.quantize import calibration_inputs

    return calibration_inputs(spec, reference, dataset, slices=slices, split=split)


def _build(
    runtime: str,
    precision: str,
    onnx_path: Path,
    folder: Path,
    calibration: Sequence[dict[str, np.ndarray]],
    plan: Int8Plan | None,
) -> float:
    """Writes the runtime's file(s) for ``precision`` into ``folder``; returns the seconds it took."""
    started = time.perf_counter()
    folder.mkdir(parents=True)
    keep_fp = list(plan.keep_fp) if plan is not None else []
    if runtime == "onnxruntime":
        if precision == "fp32":
            shutil.copyfile(onnx_path, folder / "model.onnx")
        elif precision == "int8":
            from edgesr.compress.quantize import quantize_onnxruntime

            quantize_onnxruntime(onnx_path, folder / "model.onnx", calibration, keep_fp=keep_fp)
        else:
            raise ConfigError(f"ONNX Runtime's CPU provider has no {precision} kernels worth exporting for")
    else:
        import openvino

        if precision == "int8":
            from edgesr.compress.quantize import quantize_openvino

            bias_correction = plan.bias_correction if plan is not None else False
            ir = quantize_openvino(onnx_path, calibration, keep_fp=keep_fp, bias_correction=bias_correction)
        else:
            # FP32 weights for every float precision: the precision is the compiled model's
            # INFERENCE_PRECISION_HINT (see edgesr.export.artifact), and BF16 weights would only lose bits.
            from edgesr.export.openvino import read_onnx

            ir = read_onnx(onnx_path)  # with OpenVINO's DFT-axis bug worked around
        openvino.save_model(ir, str(folder / "model.xml"), compress_to_fp16=False)
    return time.perf_counter() - started


def _verify(
    target: ExportTarget,
    precision: str,
    spec: ModelSpec,
    reference: TorchPredictor,
    folder: Path,
    dataset: PreparedDataset,
    inputs: Sequence[dict[str, np.ndarray]],
    *,
    threads: int,
    label: str,
) -> dict[str, Any]:
    """Parity (FP32) or quality within the gate (the rest); the figures, or a VerificationError."""
    # The artifact is opened the way users will open it, from its folder (its manifest comes after).
    path = folder / ENTRIES[target.runtime]
    candidate = runtime_predictor(path, runtime=target.runtime, precision=precision, threads=threads)
    executed = getattr(candidate, "executed_precision", None)
    parity = compare_outputs(reference, candidate, inputs)
    figures: dict[str, Any] = {
        "inputs": f"{len(inputs)} pipeline tiles of {target.verify.slices} test slices"
    }
    if executed is not None:
        figures["executed_precision"] = executed
    if precision == "fp32":
        check_parity(parity, limit=target.verify.max_abs_error, label=label)
        return figures | {"check": "parity", "limit": target.verify.max_abs_error, **parity}
    volumes = max(1, len(dataset.volumes(spec.intensity.modality if spec.sr is not None else "MR")))
    scores = quality(
        spec, reference, candidate, dataset, slices_per_volume=-(-target.verify.slices // volumes)
    )
    check_quality(
        scores, max_psnr_drop_db=target.verify.max_psnr_drop_db, max_ssim_drop=target.verify.max_ssim_drop,
        label=label,
    )  # fmt: skip
    gate = {"max_psnr_drop_db": target.verify.max_psnr_drop_db, "max_ssim_drop": target.verify.max_ssim_drop}
    return figures | {"check": "quality", "gate": gate, **scores, "vs_torch_fp32": parity}


def _verdict(figures: Mapping[str, Any]) -> str:
    if figures["check"] == "parity":
        return f"max error {figures['relative_error']:.1e} of the range"
    return f"{figures['psnr']:.2f} dB, {-figures['psnr_drop_db']:+.3f} dB vs PyTorch FP32"


__all__ = ["SUMMARY_FILE", "export_model"]
