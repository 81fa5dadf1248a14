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
from collections.abc import Callable, Mapping, Sequence
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
from edgesr.evaluate import score_predictor
from edgesr.export.artifact import runtime_predictor
from edgesr.export.manifest import write_manifest
from edgesr.export.targets import ExportTarget
from edgesr.export.verify import VerificationError, check_parity, check_quality, compare_outputs, quality
from edgesr.models.fold import has_subpixel_tail
from edgesr.pipeline import Predictor, TorchPredictor
from edgesr.spec import ModelSpec

SUMMARY_FILE = "export.json"
# The file each runtime opens (TensorRT: model.plan once the engine is built; the ONNX until then).
ENTRIES = {
    "onnxruntime": "model.onnx",
    "openvino": "model.xml",
    "tensorrt": "model.onnx",
    "torch": "model.safetensors",  # with checkpoint.json: the weights PyTorch runs under autocast
}
CALIBRATION_SLICES = 32  # training slices for INT8 calibration (what the compress recipes use)
# Recon models: each slice is a whole multi-coil reconstruction, seconds in ONNX Runtime's unoptimised
# calibration session (deepcomplex-r4: 3.9 s a slice, 125 s for 32). 8 slices gave the same SSIM and
# -0.045 against -0.014 dB (validation slices) in a quarter of the time.
RECON_CALIBRATION_SLICES = 8
QAT_STRUCTURE_ITEMS = 4  # calibration items that rebuild a card's QAT network before its tensors load


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
    checkpoint: str | Path | None = None,
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
        checkpoint: the model's checkpoint folder: a ``torch`` target's artifact is its weights.

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
    reference = TorchPredictor(
        model.float().cpu().eval(), spec, device="cpu", fixed_lr_size=_fixed_lr_size(target, spec)
    )
    try:
        # The verification inputs first: a fixed-shape export is traced at their size (SR: the fixed
        # crop the pipeline feeds; recon: the test data's k-space size).
        with console.status(f"recording the network inputs of {target.verify.slices} test slices"):
            inputs = _network_inputs(spec, reference, dataset, slices=target.verify.slices, split="test")
            # PyTorch's outputs, computed once for every parity check
            expected = [reference({k: torch.from_numpy(v) for k, v in item.items()}) for item in inputs]
        checks = _Checks(expected=expected)
        if not target.dynamic_shapes and spec.sr is None:
            # A fixed-shape recon model takes one k-space size: the first test slice's. Only slices of
            # that size can check it (the test volumes differ in size), and the manifest says so.
            inputs, checks = _same_kspace_size(inputs, checks)
        if target.dynamic_shapes:
            example = latency_inputs(spec, 64)
        else:
            example = {name: torch.from_numpy(array) for name, array in inputs[0].items()}
        fixed_shape: dict[str, Any] | None = None
        if reference.fixed_lr_size is not None:
            with console.status("measuring what the fixed input size costs (PyTorch: whole image vs crops)"):
                fixed_shape = _fixed_shape_cost(target, spec, model, reference, dataset)
        started = time.perf_counter()
        onnx_path = work / "model.onnx"
        fft = fft_form(target, model)
        if target.runtime != "torch":  # a torch artifact is the checkpoint's weights: no graph to export
            with console.status(f"exporting {source.get('model', 'the model')} to ONNX (dynamo exporter)"):
                from edgesr.export.onnx import export_onnx

                export_onnx(model, spec, example, onnx_path, dynamic=target.dynamic_shapes, fft=fft)
        onnx_seconds = time.perf_counter() - started
        if onnx_path.is_file():
            checks.onnx_path = onnx_path
        graph_record = _graph_record(target, spec, onnx_path, fft)
        if has_subpixel_tail(model):  # the precisions whose files (or torch runs) fold it: not INT8's
            graph_record["subpixel_tail_folded"] = [p for p in target.precisions if p != "int8"]
        calibrations: dict[int, list[dict[str, np.ndarray]]] = {}
        plan: Int8Plan | None = None
        graph: Any = None
        int8_onnx = onnx_path
        if "int8" in target.precisions and target.runtime != "torch":
            import onnx

            from edgesr.export.onnx import export_onnx, int8_unroll

            # The quantizers do not enter Loop bodies: INT8 gets the unrolls written out. And it is
            # quantized from the graph as trained, not the folded one (export_onnx's ``fold``).
            if int8_unroll(model) or has_subpixel_tail(model):
                int8_onnx = work / "model_int8.onnx"
                with console.status("exporting the graph INT8 is quantized from"):
                    export_onnx(
                        model, spec, example, int8_onnx, dynamic=target.dynamic_shapes, fft=fft,
                        unroll=int8_unroll(model), fold=False,
                    )  # fmt: skip
            graph = onnx.load(str(int8_onnx), load_external_data=False)
            plan = int8_plan(
                target.runtime, graph, spec, card_quantization, Path(checkpoint) if checkpoint else None
            )
        artifacts: dict[str, Any] = {}

        def calibration(slices: int) -> list[dict[str, np.ndarray]]:
            """Training-split network inputs, recorded once per slice count."""
            if slices not in calibrations:
                calibrations[slices] = _network_inputs(spec, reference, dataset, slices=slices, split="train")
            return calibrations[slices]

        for precision in target.precisions:
            started = time.perf_counter()
            folder = staging / precision
            label = f"{target_name} {precision}"
            int8_attempts: list[dict[str, Any]] = []
            with console.status(f"building the {label} artifact"):
                if target.runtime == "torch":
                    built = _torch_artifact(checkpoint, folder)
                elif precision == "int8" and plan is not None:
                    built, plan, int8_attempts = _build_int8(
                        target, int8_onnx, folder, _int8_candidates(plan, graph, spec, target), calibration,
                        model=model, spec=spec, reference=reference, dataset=dataset, threads=threads,
                    )  # fmt: skip
                else:
                    built = _build(target, precision, onnx_path, folder, [], None, model=model, spec=spec)
            with console.status(f"verifying the {label} artifact against PyTorch"):
                try:
                    verification = _verify(
                        target, precision, spec, reference, folder / built.entry, built.verify_runtime,
                        dataset, inputs, checks, threads=threads, label=label,
                    )  # fmt: skip
                except VerificationError as exc:
                    others = [p for p in target.precisions if p != precision]
                    hint = f" (to export the others: precisions=[{','.join(others)}])" if others else ""
                    if int8_attempts:
                        tried = "; ".join(
                            f"{a['origin']} ({a['kept_in_float']} convolutions in float): "
                            f"{-a['psnr_drop_db']:+.3f} dB, {-a['ssim_drop']:+.4f} SSIM"
                            for a in int8_attempts
                        )
                        hint = f"; tried on validation slices: {tried}{hint}"
                    raise VerificationError(f"{exc}{hint}") from None
            if built.engine is not None:
                verification["engine"] = built.engine
            if fixed_shape is not None:
                verification["fixed_shape"] = fixed_shape
            if precision == "int8" and plan is not None:
                verification["int8"] = dataclasses.asdict(plan) | {
                    "keep_fp": list(plan.keep_fp),
                    "qat_weights": plan.qat_weights.name if plan.qat_weights is not None else None,
                    "attempts": int8_attempts,  # on the validation split, when the first plan missed
                }
            manifest = write_manifest(
                folder, target=target_name, runtime=target.runtime, precision=precision,
                entry=built.entry, spec=spec, source=source, verification=verification,
                versions={"torch": torch.__version__, **runtime_versions()}, graph=graph_record,
            )  # fmt: skip
            build_seconds = built.seconds
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


def fft_form(target: ExportTarget, model: nn.Module) -> str:
    """The FFT form the export writes: the target's, except for a model with solver loops (MoDL) in
    OpenVINO at a precision below FP32, which gets the DFT op.

    OpenVINO runs a ``Loop`` body at the compiled precision and ignores the FP32 marks inside it, so
    MoDL's CG steps would run the DFT matrix products in BF16: `modl-r4` lost 4.2 dB that way, and 0.001 dB
    with the DFT op, which OpenVINO computes in FP32 (measured). FP32 alone keeps the faster products.
    """
    return fft_for(model, runtimes=[target.runtime], precisions=target.precisions, default=target.fft)


def fft_for(model: nn.Module, *, runtimes: Sequence[str], precisions: Sequence[str], default: str) -> str:
    """:func:`fft_form` for a file that several runtimes and precisions share (compress reports and
    quantize stages, where OpenVINO runs at its BF16 default): ``"dft"`` for a model with solver loops
    when OpenVINO may run it below FP32, else ``default``."""
    if "openvino" in runtimes and has_solver_loops(model) and set(precisions) - {"fp32"}:
        return "dft"
    return default


def has_solver_loops(model: nn.Module) -> bool:
    """Whether ``model`` exports ONNX Loops around its FFTs (MoDL's unrolls and CG steps)."""
    return any(getattr(module, "exports_solver_loops", False) for module in model.modules())


def _graph_record(target: ExportTarget, spec: ModelSpec, onnx_path: Path, fft: str) -> dict[str, Any]:
    """How the ONNX graph was exported, for the manifest; the opset is the exported float graph's, which
    the INT8 files keep. A torch artifact has no graph: only its ``torch_compile`` mode when it has one."""
    if not onnx_path.is_file():
        return {"torch_compile": target.compile} if target.compile else {}
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    record: dict[str, Any] = {
        "opset": next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")),
        "dynamic_shapes": target.dynamic_shapes,
    }
    if not target.dynamic_shapes:  # the traced sizes (recon: the test data's k-space size, not input_size)
        record["input_shapes"] = {
            value.name: [dim.dim_value for dim in value.type.tensor_type.shape.dim]
            for value in proto.graph.input
        }
    if spec.recon is not None:
        record["fft"] = fft
    return record


@dataclasses.dataclass(frozen=True)
class Int8Plan:
    """How an INT8 file is made: the convolutions kept in float, calibration slices, bias correction.

    ``qat_weights``: a student card's QAT checkpoint (weights and quantizer scales); the file is then
    converted from the fake-quantized model with those tensors, not quantized after training.
    """

    keep_fp: tuple[str, ...]
    calibration_slices: int
    bias_correction: bool
    origin: str  # "card", "card (QAT weights)" or "default scope"
    note: str = ""
    qat_weights: Path | None = None
    qat_weights_sha256: str = ""


def int8_plan(
    runtime: str,
    graph: Any,
    spec: ModelSpec,
    card_quantization: Mapping[str, Any] | None,
    card_folder: Path | None = None,
) -> Int8Plan:
    """The student card's INT8 settings for ``runtime`` when it has them, else the family's default.

    A card whose chosen attempt was QAT and that ships the QAT weights (``qat_weights``, in
    ``card_folder``) gives those: the file is the one the card measured. Without them (cards written
    before the weights shipped) its scope and calibration are applied as post-training quantization,
    and only the card's ``rebuild_command`` retrains QAT.

    Raises:
        ConfigError: the card names convolutions that the exported graph does not have.
        DataError: the card's QAT weights are missing or not the file it names (sha256).
    """
    entry = (card_quantization or {}).get(runtime)
    if runtime == "tensorrt" and entry is None:
        # The card's ONNX Runtime attempt made the same kind of file (a QDQ ONNX from the same quantizer):
        # its scope and calibration are the measured starting point; only the symmetry differs.
        entry = (card_quantization or {}).get("onnxruntime")
    if not isinstance(entry, Mapping) or not isinstance(entry.get("attempt"), Mapping):
        from edgesr.compress.quantize import default_scope

        keep = tuple(default_scope(spec).resolve(graph))
        slices = CALIBRATION_SLICES if spec.sr is not None else RECON_CALIBRATION_SLICES
        return Int8Plan(keep, slices, False, "default scope")
    attempt = entry["attempt"]
    convs = {node.name for node in graph.graph.node if node.op_type == "Conv"}
    unknown = sorted(set(attempt["keep_fp"]) - convs)
    if unknown:
        raise ConfigError(
            f"the model card keeps {', '.join(unknown)} in float for {runtime}, but the exported graph has "
            "no such convolution (exported by another torch version?); re-run the card's rebuild_command"
        )
    plan = Int8Plan(
        tuple(attempt["keep_fp"]), int(attempt["calibration_slices"]), bool(attempt.get("bias_correction")),
        "card",
    )  # fmt: skip
    if attempt.get("remedy") != "qat":
        return plan
    shipped = entry.get("qat_weights")
    if isinstance(shipped, Mapping) and card_folder is not None:
        folder = _qat_folder(card_folder, shipped)
        note = (
            f"QAT weights shipped with the card ({shipped['folder']}/, "
            f"best validation at step {shipped.get('step')})"
        )
        return dataclasses.replace(
            plan,
            origin="card (QAT weights)",
            note=note,
            qat_weights=folder,
            qat_weights_sha256=str(shipped["sha256"]),
        )
    note = "the card chose QAT; this file is PTQ with the card's scope (its rebuild_command retrains QAT)"
    return dataclasses.replace(plan, note=note)


def _int8_candidates(plan: Int8Plan, graph: Any, spec: ModelSpec, target: ExportTarget) -> list[Int8Plan]:
    """The plans an INT8 export tries in order: the plan, then (default scope only) one more float layer.

    A model card's settings were chosen by its compress run and are used as they are. The family's
    default scope gets the compress stage's first remedy (``keep_fp``): deepcomplex-r4's ONNX Runtime
    INT8 lost 0.010 SSIM with it (gate 0.005) and 0.003 with one more convolution kept in float at each
    end. Attempts are scored on validation slices; the test slices only verify the chosen one. A
    fixed-shape recon export takes one k-space size, which the validation slices may not have: it
    gets the plan alone.
    """
    if plan.origin != "default scope" or (spec.recon is not None and not target.dynamic_shapes):
        return [plan]
    from edgesr.compress.quantize import default_scope

    wider = tuple(default_scope(spec).widened().resolve(graph))
    if wider == plan.keep_fp:
        return [plan]
    return [
        plan,
        dataclasses.replace(plan, keep_fp=wider, origin="default scope, one more float layer per end"),
    ]


def _build_int8(
    target: ExportTarget,
    onnx_path: Path,
    folder: Path,
    candidates: Sequence[Int8Plan],
    calibration: Callable[[int], list[dict[str, np.ndarray]]],
    *,
    model: nn.Module,
    spec: ModelSpec,
    reference: TorchPredictor,
    dataset: PreparedDataset,
    threads: int,
) -> tuple[_Built, Int8Plan, list[dict[str, Any]]]:
    """Builds the first candidate that meets the gate on validation slices (or the last one tried).

    Returns the built file, the plan it was built with and the attempts' validation figures (empty when
    there was a single candidate: the verification on test slices is then the only check).
    """
    attempts: list[dict[str, Any]] = []
    volumes = max(1, len(dataset.volumes(spec.intensity.modality if spec.sr is not None else "MR", "val")))
    per_volume = -(-target.verify.slices // volumes)
    val_reference: dict[str, Any] | None = None
    for index, plan in enumerate(candidates):
        shutil.rmtree(folder, ignore_errors=True)
        built = _build(
            target,
            "int8",
            onnx_path,
            folder,
            calibration(plan.calibration_slices),
            plan,
            model=model,
            spec=spec,
        )
        if len(candidates) == 1:
            return built, plan, attempts
        candidate = runtime_predictor(
            folder / built.entry, runtime=built.verify_runtime, precision="int8", threads=threads
        )
        if val_reference is None:
            val_reference = score_predictor(spec, reference, dataset, split="val", max_slices=per_volume)
        figures = quality(
            spec, reference, candidate, dataset, slices_per_volume=per_volume, split="val",
            reference_scores=val_reference,
        )  # fmt: skip
        del candidate  # its session holds the files open
        met = (
            figures["psnr_drop_db"] <= target.verify.max_psnr_drop_db
            and figures["ssim_drop"] <= target.verify.max_ssim_drop
        )
        attempts.append(
            {"origin": plan.origin, "kept_in_float": len(plan.keep_fp), "split": "val",
             "slices": figures["slices"], "psnr_drop_db": figures["psnr_drop_db"],
             "ssim_drop": figures["ssim_drop"], "met_gate": met}
        )  # fmt: skip
        if met or index == len(candidates) - 1:
            return built, plan, attempts
    raise ValueError("_build_int8 needs at least one candidate plan")


def _qat_folder(card_folder: Path, shipped: Mapping[str, Any]) -> Path:
    """The card's QAT checkpoint folder, checked against the sha256 the card records."""
    import hashlib

    from edgesr.errors import DataError
    from edgesr.train.checkpoint import MODEL_FILE

    folder = (card_folder / str(shipped["folder"])).resolve()
    if not folder.is_relative_to(card_folder.resolve()):
        raise DataError(
            f"{card_folder}/model_card.json: qat_weights folder {shipped['folder']!r} leaves the card folder"
        )
    weights = folder / MODEL_FILE
    if not weights.is_file():
        raise DataError(f"{weights}: the model card's QAT weights are missing")
    found = hashlib.sha256(weights.read_bytes()).hexdigest()
    if found != shipped["sha256"]:
        raise DataError(f"{weights}: sha256 {found[:12]} is not the card's {str(shipped['sha256'])[:12]}")
    return folder


def _check_out(out: Path) -> None:
    """``out`` is new, empty, or an earlier export (replaced whole at the end); never someone's files."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} is a file; choose a folder for the export")
    if out.is_dir() and any(out.iterdir()) and not (out / SUMMARY_FILE).is_file():
        raise ConfigError(f"out={out} holds files that are not an edgesr export; choose another out=")


def _check_buildable(target: ExportTarget, name: str) -> None:
    if target.runtime not in ENTRIES:
        raise ConfigError(
            f"target {name}: {target.runtime} artifacts cannot be built by edgesr export (it builds "
            f"{', '.join(ENTRIES)} artifacts)"
        )
    if target.runtime == "onnxruntime" and set(target.precisions) - {"fp32", "int8"}:
        raise ConfigError(f"target {name}: ONNX Runtime's CPU provider takes fp32 and int8 artifacts")
    if target.runtime == "tensorrt" and "bf16" in target.precisions:
        raise ConfigError(f"target {name}: edgesr builds TensorRT engines at fp32, fp16 and int8")
    if target.runtime == "torch" and "int8" in target.precisions:
        raise ConfigError(f"target {name}: PyTorch artifacts run at fp32, bf16 or fp16 (autocast)")
    if target.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"target {name}: device=cuda, but torch sees no CUDA device here (device=auto or cpu)"
        )


def _fixed_shape_cost(
    target: ExportTarget, spec: ModelSpec, model: nn.Module, fixed: TorchPredictor, dataset: PreparedDataset
) -> dict[str, Any]:
    """PSNR/SSIM of the model fed fixed-size crops against the same model on whole images (PyTorch).

    Crops inside the image are exact; an image smaller than the crop is padded, which changes the last
    pixels before the padding (:func:`edgesr.pipeline.prepare_sr`). The export fails when that costs
    more than the verification gate, since no precision could then pass honestly.
    """
    whole = TorchPredictor(model.float().cpu().eval(), spec, device="cpu")
    volumes = max(1, len(dataset.volumes(spec.intensity.modality, "test")))
    scores = quality(spec, whole, fixed, dataset, slices_per_volume=-(-target.verify.slices // volumes))
    check_quality(
        scores, max_psnr_drop_db=target.verify.max_psnr_drop_db, max_ssim_drop=target.verify.max_ssim_drop,
        label=f"a fixed input of {fixed.fixed_lr_size}x{fixed.fixed_lr_size} LR pixels (PyTorch)",
    )  # fmt: skip
    return {
        "lr_input": fixed.fixed_lr_size,
        "psnr_drop_db": scores["psnr_drop_db"],
        "ssim_drop": scores["ssim_drop"],
        "slices": scores["slices"],
    }


def _fixed_lr_size(target: ExportTarget, spec: ModelSpec) -> int | None:
    """The LR input size of a fixed-shape SR export: the profile's output ``input_size`` / scale."""
    if target.dynamic_shapes or spec.sr is None:
        return None
    if target.input_size % spec.sr.scale:
        raise ConfigError(
            f"input_size={target.input_size} is not a multiple of the model's scale {spec.sr.scale}"
        )
    return target.input_size // spec.sr.scale


@dataclasses.dataclass
class _Checks:
    """What the checks of one export share: PyTorch's outputs and scores, computed once."""

    expected: list[torch.Tensor]
    reference_scores: dict[str, Any] | None = None
    kspace_shape: tuple[int, int] | None = None  # a fixed-shape recon export's only k-space size
    onnx_path: Path | None = None  # the float graph the artifacts were built from (to locate a failure)


def _same_kspace_size(
    inputs: list[dict[str, np.ndarray]], checks: _Checks
) -> tuple[list[dict[str, np.ndarray]], _Checks]:
    shape = tuple(inputs[0]["masked_kspace"].shape[-2:])
    keep = [i for i, item in enumerate(inputs) if tuple(item["masked_kspace"].shape[-2:]) == shape]
    kspace_shape = (int(shape[0]), int(shape[1]))
    return [inputs[i] for i in keep], _Checks([checks.expected[i] for i in keep], None, kspace_shape)


def _network_inputs(
    spec: ModelSpec, reference: Predictor, dataset: PreparedDataset, *, slices: int, split: str
) -> list[dict[str, np.ndarray]]:
    from edgesr.compress.quantize import calibration_inputs

    return calibration_inputs(spec, reference, dataset, slices=slices, split=split)


@dataclasses.dataclass(frozen=True)
class _Built:
    """One precision's files: what the runtime opens, what verifies it, and the engine record."""

    entry: str
    verify_runtime: str
    seconds: float
    engine: dict[str, Any] | None = None


def _build(
    target: ExportTarget,
    precision: str,
    onnx_path: Path,
    folder: Path,
    calibration: Sequence[dict[str, np.ndarray]],
    plan: Int8Plan | None,
    *,
    model: nn.Module,
    spec: ModelSpec,
) -> _Built:
    """Writes the runtime's file(s) for ``precision`` into ``folder``."""
    started = time.perf_counter()
    folder.mkdir(parents=True)
    keep_fp = list(plan.keep_fp) if plan is not None else []
    runtime = target.runtime
    if precision == "int8" and plan is not None and plan.qat_weights is not None:
        _qat_file(target, onnx_path, folder, calibration, plan, model=model, spec=spec)
        if runtime == "tensorrt":
            return _tensorrt_engine(target, precision, folder, started)
        entry = "model.xml" if runtime == "openvino" else "model.onnx"
        return _Built(entry, runtime, time.perf_counter() - started)
    if runtime in ("onnxruntime", "tensorrt"):
        if precision == "int8":
            from edgesr.compress.quantize import quantize_onnxruntime

            # TensorRT's explicit quantization takes symmetric scales only (zero point 0).
            quantize_onnxruntime(
                onnx_path,
                folder / "model.onnx",
                calibration,
                keep_fp=keep_fp,
                symmetric=runtime == "tensorrt",
                float_paths=spec.task == "recon",
            )
        else:
            shutil.copyfile(onnx_path, folder / "model.onnx")
        if runtime == "onnxruntime":
            return _Built("model.onnx", "onnxruntime", time.perf_counter() - started)
        return _tensorrt_engine(target, precision, folder, started)
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
    return _Built("model.xml", "openvino", time.perf_counter() - started)


def _qat_file(
    target: ExportTarget,
    onnx_path: Path,
    folder: Path,
    calibration: Sequence[dict[str, np.ndarray]],
    plan: Int8Plan,
    *,
    model: nn.Module,
    spec: ModelSpec,
) -> None:
    """The INT8 file of a card's QAT model: fake quantizers inserted as in training, its tensors loaded.

    NNCF rebuilds the fake-quantized network from the float student, the card's scope and calibration
    (the same inputs as when it was trained); the shipped checkpoint then sets every weight and
    quantizer scale, so the file is the one the card measured, without training.
    """
    import onnx

    from edgesr.compress import qat
    from edgesr.train.checkpoint import load_weights

    if plan.qat_weights is None:
        raise ValueError("_qat_file needs a plan with qat_weights")
    graph = onnx.load(str(onnx_path), load_external_data=False)
    # The checkpoint sets every weight, bias and quantizer scale (a strict load), so the calibration only
    # has to build the network's structure: a few items do (rdn-mr-x2-edge: 1 and 16 items give the same
    # outputs, to the bit), where NNCF's statistics over a fixed-shape export's hundreds of tiles took
    # more than 10 minutes.
    items = [qat.torch_inputs(spec, item) for item in calibration[:QAT_STRUCTURE_ITEMS]]
    kept = qat.kept_modules(model, graph, plan.keep_fp)
    fake_quantized = qat.quantize_torch(model, items, keep_fp=kept)
    load_weights(plan.qat_weights, fake_quantized)
    example = items[0]
    if target.runtime == "openvino":
        import openvino

        ir = qat.to_openvino(fake_quantized, example)
        openvino.save_model(ir, str(folder / "model.xml"), compress_to_fp16=False)
        return
    qat.to_qdq_onnx(fake_quantized, spec, example, folder / "model.onnx", dynamic=target.dynamic_shapes)
    if target.runtime == "tensorrt":
        qat.require_signed_qdq(folder / "model.onnx")


def _torch_artifact(checkpoint: str | Path | None, folder: Path) -> _Built:
    """The checkpoint's weights and JSON: what a ``torch`` target's predictor loads."""
    from edgesr.export.torch_artifact import copy_checkpoint

    if checkpoint is None:
        raise ConfigError("a torch artifact is made from a checkpoint folder; none was given")
    started = time.perf_counter()
    copy_checkpoint(checkpoint, folder)
    return _Built(ENTRIES["torch"], "torch", time.perf_counter() - started)


def _tensorrt_engine(target: ExportTarget, precision: str, folder: Path, started: float) -> _Built:
    """The engine beside the ONNX when it can be built here; else the ONNX, verified in ONNX Runtime.

    A ``build_on_device`` target (Jetson) builds only on the device itself; elsewhere the artifact holds
    the verified ONNX and says where its engine is to be built.
    """
    from edgesr.export.tensorrt import PLAN_FILE, build_engine, on_jetson, tensorrt_missing

    reason = tensorrt_missing()
    if reason is None and target.build_on_device and not on_jetson():
        reason = "the profile builds its engine on the device itself (engines are not portable)"
    if reason is not None:
        engine = {"built": False, "reason": reason, "verified_with": "onnxruntime (proxy for the engine)"}
        return _Built("model.onnx", "onnxruntime", time.perf_counter() - started, engine)
    record = build_engine(
        folder / "model.onnx", folder / PLAN_FILE, precision=precision, workspace_gb=target.workspace_gb
    )
    return _Built(PLAN_FILE, "tensorrt", time.perf_counter() - started, {"built": True, **record})


def _first_divergent_layer(
    reference: TorchPredictor,
    path: Path,
    runtime: str,
    inputs: Sequence[dict[str, np.ndarray]],
    parity: dict[str, Any],
    checks: _Checks,
    target: ExportTarget,
    threads: int,
) -> str:
    """The failed parity check's diagnosis (:mod:`edgesr.export.locate`): which layer differs first."""
    from edgesr.export.locate import describe, first_divergent_layer

    if checks.onnx_path is None or runtime not in ("onnxruntime", "openvino"):
        return ""
    # Layers carry float rounding of their own: a layer counts as diverging at a tenth of the output's
    # error when that is above the limit (a wrong layer is off by orders of magnitude more).
    limit = max(target.verify.max_abs_error, float(parity["relative_error"]) / 10)
    try:
        found = first_divergent_layer(
            reference.module, reference.input_names, checks.onnx_path, path, runtime,
            inputs[int(parity["worst_item"])], limit=limit, threads=threads,
        )  # fmt: skip
    except Exception as exc:  # a diagnosis must not hide the failure it explains
        return f" Layer not located ({type(exc).__name__}: {exc})."
    return describe(found)


def _verify(
    target: ExportTarget,
    precision: str,
    spec: ModelSpec,
    reference: TorchPredictor,
    path: Path,
    runtime: str,
    dataset: PreparedDataset,
    inputs: Sequence[dict[str, np.ndarray]],
    checks: _Checks,
    *,
    threads: int,
    label: str,
) -> dict[str, Any]:
    """Parity (FP32) or quality within the gate (the rest); the figures, or a VerificationError.

    A TensorRT artifact whose engine is not built here is checked as its ONNX in ONNX Runtime: the FP32
    graph an FP16 engine is built from by parity, a QDQ graph by quality.
    """
    # The artifact is opened the way users will open it, from its folder (its manifest comes after).
    device = None if target.device == "auto" else target.device
    candidate = runtime_predictor(
        path,
        runtime=runtime,
        precision=precision,
        threads=threads,
        device=device,
        compile_mode=target.compile,
    )
    executed = getattr(candidate, "executed_precision", None)
    parity = compare_outputs(reference, candidate, inputs, expected=checks.expected)
    figures: dict[str, Any] = {
        "inputs": f"{len(inputs)} pipeline tiles of {target.verify.slices} test slices",
        "runtime": runtime,
    }
    if checks.kspace_shape is not None:
        figures["inputs"] += f" (those of {checks.kspace_shape[0]}x{checks.kspace_shape[1]} k-space only)"
        figures["kspace_shape"] = list(checks.kspace_shape)
    if executed is not None:
        figures["executed_precision"] = executed
    if runtime == "torch":
        figures["device"] = str(getattr(candidate, "device", "cpu"))  # CUDA where there is a GPU
    graph_is_float = precision == "fp32" or (precision == "fp16" and runtime == "onnxruntime")
    if graph_is_float:
        try:
            check_parity(parity, limit=target.verify.max_abs_error, label=label)
        except VerificationError as exc:
            where = _first_divergent_layer(reference, path, runtime, inputs, parity, checks, target, threads)
            raise VerificationError(f"{exc}.{where}") from None
        return figures | {"check": "parity", "limit": target.verify.max_abs_error, **parity}
    volumes = max(1, len(dataset.volumes(spec.intensity.modality if spec.sr is not None else "MR", "test")))
    per_volume = -(-target.verify.slices // volumes)
    if checks.reference_scores is None:
        checks.reference_scores = score_predictor(
            spec, reference, dataset, split="test", max_slices=per_volume, kspace_shape=checks.kspace_shape
        )
    scores = quality(
        spec, reference, candidate, dataset, slices_per_volume=per_volume,
        reference_scores=checks.reference_scores, kspace_shape=checks.kspace_shape,
    )  # fmt: skip
    check_quality(
        scores, max_psnr_drop_db=target.verify.max_psnr_drop_db, max_ssim_drop=target.verify.max_ssim_drop,
        label=label,
    )  # fmt: skip
    gate = {"max_psnr_drop_db": target.verify.max_psnr_drop_db, "max_ssim_drop": target.verify.max_ssim_drop}
    return figures | {"check": "quality", "gate": gate, **scores, "vs_torch_fp32": parity}


def _verdict(figures: Mapping[str, Any]) -> str:
    # What the runtime executed, where the CPU or the runtime made it differ from what was asked (a BF16
    # file on a CPU without BF16 units runs FP32; a QDQ file whose convolutions ONNX Runtime could not
    # fuse runs them in float).
    executed = f"; executes {figures['executed_precision']}" if "executed_precision" in figures else ""
    if figures["check"] == "parity":
        return f"max error {figures['relative_error']:.1e} of the range{executed}"
    return f"{figures['psnr']:.2f} dB, {-figures['psnr_drop_db']:+.3f} dB vs PyTorch FP32{executed}"


__all__ = ["SUMMARY_FILE", "export_model"]
