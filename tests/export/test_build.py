"""`edgesr export`: one verified artifact folder per precision of a target, written whole or not at all,
and opened again as a predictor that gives the torch module's results."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgesr.cli import main
from edgesr.errors import ConfigError
from edgesr.export.artifact import open_artifact
from edgesr.export.targets import list_targets, load_target
from tests.conftest import export_cli


def test_every_shipped_profile_loads_and_bad_keys_name_themselves():
    assert {"cpu-onnxruntime", "cpu-openvino"} <= set(list_targets())
    for name in list_targets():
        load_target(name)
    with pytest.raises(ConfigError, match="precisions"):
        load_target("cpu-openvino", ["precisions=[fp8]"])
    with pytest.raises(ConfigError, match="verfy"):
        load_target("cpu-openvino", ["verfy.slices=2"])
    with pytest.raises(ConfigError, match="fft"):
        load_target("cpu-openvino", ["fft=fast"])
    assert load_target("cpu-openvino", ["fft=dft"]).fft == "dft"  # the DFT op stays a choice
    with pytest.raises(ConfigError, match="device is for torch artifacts"):
        load_target("cpu-openvino", ["device=cpu"])
    with pytest.raises(ConfigError, match="device"):
        load_target("cpu-torch", ["device=tpu"])
    if not torch.cuda.is_available():  # refused before anything is exported, with the reason
        from edgesr.export.build import _check_buildable

        with pytest.raises(ConfigError, match="device=cuda, but torch sees no CUDA device"):
            _check_buildable(load_target("gpu-torch", ["device=cuda"]), "gpu-torch")


def test_onnxruntime_fp32_and_int8_export_verify_and_run_like_torch(tiny_dataset, tiny_checkpoint, tmp_path):
    out = tmp_path / "exported"
    assert export_cli(tiny_dataset, tiny_checkpoint, out, "target=cpu-onnxruntime", "verify.slices=2") == 0
    summary = json.loads((out / "export.json").read_text())
    assert set(summary["artifacts"]) == {"fp32", "int8"} and summary["target"] == "cpu-onnxruntime"
    fp32 = summary["artifacts"]["fp32"]["verification"]
    assert fp32["check"] == "parity" and fp32["relative_error"] <= 1e-4 and fp32["items"] >= 2
    int8 = summary["artifacts"]["int8"]["verification"]
    assert int8["check"] == "quality" and int8["psnr_drop_db"] <= 0.3 and int8["slices"] >= 1
    # What ONNX Runtime executes, from its optimised graph: the fused INT8 convolutions and the float ones.
    assert fp32["executed_precision"] == "fp32" and int8["executed_precision"].startswith("int8")
    assert summary["source"]["model"] == "rdn_tiny" and len(summary["source"]["weights_sha256"]) == 64
    assert not list(tmp_path.glob(".*staging*"))  # nothing left beside the export

    # The artifact, opened from its folder, gives the torch module's output on a new odd-sized input.
    predictor, manifest = open_artifact(out / "fp32")
    assert manifest.precision == "fp32" and manifest.spec.sr is not None and manifest.spec.sr.scale == 2
    assert manifest.graph["opset"] >= 17 and manifest.graph["dynamic_shapes"] is True
    assert "fft" not in manifest.graph  # an SR model has none
    assert "subpixel_tail_folded" not in manifest.graph  # an RDN's 3x3 tail stays as trained
    from edgesr.train.checkpoint import load_for_inference

    model, _, _ = load_for_inference(tiny_checkpoint)
    lr = torch.rand(1, 1, 23, 19)
    base = torch.nn.functional.interpolate(lr, scale_factor=2, mode="nearest")
    with torch.no_grad():
        expected = model(lr, base)
    assert torch.allclose(predictor({"lr": lr, "base": base}), expected, atol=1e-5)


def test_int8_with_the_default_scope_tries_one_more_float_layer_on_validation_slices(
    tiny_dataset, tiny_checkpoint, tmp_path, capsys
):
    """The compress stage's first remedy, at export: scored on validation slices, the test slices verify."""
    common = ("target=cpu-onnxruntime", "precisions=[int8]", "verify.slices=2")
    loose = (*common, "verify.max_psnr_drop_db=20", "verify.max_ssim_drop=1")
    assert export_cli(tiny_dataset, tiny_checkpoint, tmp_path / "loose", *loose) == 0
    manifest = json.loads((tmp_path / "loose" / "int8" / "manifest.json").read_text())
    int8 = manifest["verification"]["int8"]
    assert int8["origin"] == "default scope" and len(int8["attempts"]) == 1
    assert int8["attempts"][0]["met_gate"] and int8["attempts"][0]["split"] == "val"
    # An unreachable gate: both plans are tried and named in the refusal, and nothing is left behind.
    strict = (*common, "verify.max_psnr_drop_db=0", "verify.max_ssim_drop=0")
    assert export_cli(tiny_dataset, tiny_checkpoint, tmp_path / "strict", *strict) == 2
    message = capsys.readouterr().err
    assert "tried on validation slices: default scope (" in message
    assert "one more float layer per end" in message
    assert not (tmp_path / "strict").exists()


def test_openvino_artifacts_run_at_the_precision_they_were_verified_at(
    tiny_dataset, tiny_checkpoint, tmp_path
):
    out = tmp_path / "ov"
    argv = ["target=cpu-openvino", "precisions=[fp32,bf16]", "verify.slices=1"]
    assert export_cli(tiny_dataset, tiny_checkpoint, out, *argv) == 0
    summary = json.loads((out / "export.json").read_text())
    assert summary["artifacts"]["fp32"]["verification"]["executed_precision"] == "fp32"
    bf16 = summary["artifacts"]["bf16"]["verification"]
    assert bf16["check"] == "quality" and bf16["executed_precision"] in (
        "bf16",
        "fp32",
    )  # fp32: no AMX/AVX512
    assert {"model.xml", "model.bin"} == set(summary["artifacts"]["bf16"]["files"])
    predictor, _ = open_artifact(out / "fp32")
    assert predictor.executed_precision == "fp32"


def test_a_failed_verification_leaves_nothing_and_keeps_an_earlier_export(
    tiny_dataset, tiny_checkpoint, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "exported"
    assert export_cli(tiny_dataset, tiny_checkpoint, out, "precisions=[fp32]", "verify.slices=1") == 0
    before = {p.name: p.read_bytes() for p in (out / "fp32").iterdir()}

    # A runtime that computes one layer wrongly: its output is off by 1% of the range.
    import edgesr.export.build as build

    real = build.runtime_predictor

    def wrong(*args, **kwargs):
        predictor = real(*args, **kwargs)
        return lambda inputs: predictor(inputs) + 0.01

    monkeypatch.setattr(build, "runtime_predictor", wrong)
    assert export_cli(tiny_dataset, tiny_checkpoint, out, "precisions=[fp32]", "verify.slices=1") == 2
    err = capsys.readouterr().err
    assert "differs from PyTorch" in err and "nothing was kept" in err
    # The diagnosis runs the file itself, whose convolutions are right: the error comes after them.
    assert "convolutions compared match PyTorch" in " ".join(err.split())
    assert {p.name: p.read_bytes() for p in (out / "fp32").iterdir()} == before
    assert not list(tmp_path.glob(".*staging*"))


def test_export_never_writes_into_someone_elses_folder(tiny_dataset, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert export_cli(tiny_dataset, tiny_checkpoint, out, "precisions=[fp32]") == 2
    assert "not an edgesr export" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_export_needs_exactly_one_model_and_a_known_target(tiny_checkpoint, capsys):
    assert main(["export", f"checkpoint={tiny_checkpoint}", "model=rdn-mr-x2"]) == 2
    assert "exactly one of" in capsys.readouterr().err
    assert main(["export", f"checkpoint={tiny_checkpoint}", "target=cpu-tflite"]) == 2
    assert "no export target 'cpu-tflite'" in capsys.readouterr().err


def test_verification_figures_are_computed_not_assumed():
    from edgesr.export.verify import VerificationError, check_parity, compare_outputs

    def reference(inputs):
        return inputs["x"] * 2

    inputs = [{"x": np.linspace(0, 1, 16, dtype=np.float32).reshape(1, 1, 4, 4)}]
    same = compare_outputs(reference, reference, inputs)
    assert same["max_abs_error"] == 0 and same["psnr_db"] == float("inf") and same["data_range"] == 2.0
    off = compare_outputs(reference, lambda i: reference(i) + 0.002, inputs)
    assert off["relative_error"] == pytest.approx(0.001, rel=1e-3)
    with pytest.raises(VerificationError, match="0.001 of the data range"):
        check_parity(off, limit=1e-4, label="t")
    # Where the error is largest is said: one wrong pixel at the border points at padding.
    corner = compare_outputs(
        reference,
        lambda i: reference(i).index_put((torch.tensor(0),) * 3 + (torch.tensor(3),), torch.tensor(9.0)),
        inputs,
    )
    assert corner["worst_at"] == [0, 0, 0, 3]
    with pytest.raises(VerificationError, match="largest at channel 0, row 0, column 3"):
        check_parity(corner, limit=1e-4, label="t")
    with pytest.raises(VerificationError, match="NaN or Inf"):
        compare_outputs(reference, lambda i: reference(i) * float("nan"), inputs)


def test_enhance_runs_an_artifact_like_its_checkpoint(tiny_dataset, tiny_checkpoint, tmp_path, capsys):
    """Same formats, tiling and outputs as `enhance checkpoint=`; equal within the verified tolerance."""
    from edgesr.data.images import load_image

    out = tmp_path / "exported"
    assert export_cli(tiny_dataset, tiny_checkpoint, out, "precisions=[fp32]", "verify.slices=1") == 0
    pixels = (np.random.default_rng(0).random((3, 41, 29)) * 200 + 20).astype(np.float32)
    np.save(tmp_path / "lr.npy", pixels)
    common = [f"input={tmp_path / 'lr.npy'}", "tile=16"]  # several tiles with halos
    assert (
        main(["enhance", f"checkpoint={tiny_checkpoint}", *common, f"output={tmp_path / 'torch.npy'}"]) == 0
    )
    assert main(["enhance", f"artifact={out / 'fp32'}", *common, f"output={tmp_path / 'onnx.npy'}"]) == 0
    expected, actual = load_image(tmp_path / "torch.npy").data, load_image(tmp_path / "onnx.npy").data
    assert actual.shape == expected.shape == (3, 82, 58)
    assert np.abs(actual - expected).max() <= 1e-4 * (expected.max() - expected.min())
    # The Python API names what ran: the runtime, the artifact file's and the checkpoint's sha256.
    from edgesr import Enhancer
    from edgesr.export.manifest import read_manifest
    from edgesr.train.checkpoint import weights_sha256

    provenance = Enhancer.from_artifact(out / "fp32").provenance
    manifest = read_manifest(out / "fp32")
    assert (provenance.runtime, provenance.precision) == (manifest.runtime, "fp32")
    assert provenance.artifact_sha256 == manifest.files[manifest.entry]
    assert provenance.weights_sha256 == weights_sha256(tiny_checkpoint)

    # A changed file is refused before any work, by name.
    (out / "fp32" / "model.onnx").write_bytes((out / "fp32" / "model.onnx").read_bytes() + b"\0")
    argv = ["enhance", f"artifact={out / 'fp32'}", *common, f"output={tmp_path / 'again.npy'}"]
    assert main(argv) == 2
    assert "model.onnx has changed since export" in capsys.readouterr().err
    assert not (tmp_path / "again.npy").exists()


def test_int8_keeps_a_student_cards_scope_and_refuses_names_the_graph_lacks(tiny_checkpoint, tmp_path):
    import onnx

    from edgesr.bench.timing import latency_inputs
    from edgesr.export.build import int8_plan
    from edgesr.export.onnx import export_onnx
    from edgesr.train.checkpoint import load_for_inference

    model, spec, _ = load_for_inference(tiny_checkpoint)
    path = export_onnx(model, spec, latency_inputs(spec, 32), tmp_path / "m.onnx")
    graph = onnx.load(str(path))
    default = int8_plan("openvino", graph, spec, None)
    assert default.origin == "default scope" and default.keep_fp and default.calibration_slices == 32
    attempt = {"remedy": "qat", "keep_fp": list(default.keep_fp[:1]), "calibration_slices": 8,
               "bias_correction": True}  # fmt: skip
    plan = int8_plan("openvino", graph, spec, {"openvino": {"attempt": attempt}})
    assert plan.origin == "card" and plan.keep_fp == default.keep_fp[:1] and plan.bias_correction
    assert plan.calibration_slices == 8 and "QAT" in plan.note
    with pytest.raises(ConfigError, match="node_conv2d_999"):
        int8_plan(
            "openvino", graph, spec, {"openvino": {"attempt": attempt | {"keep_fp": ["node_conv2d_999"]}}}
        )


def test_a_cards_shipped_qat_weights_are_used_only_when_they_are_the_cards_file(tiny_checkpoint, tmp_path):
    import hashlib
    import shutil

    import onnx

    from edgesr.bench.timing import latency_inputs
    from edgesr.errors import DataError
    from edgesr.export.build import int8_plan
    from edgesr.export.onnx import export_onnx
    from edgesr.train.checkpoint import load_for_inference

    model, spec, _ = load_for_inference(tiny_checkpoint)
    graph = onnx.load(str(export_onnx(model, spec, latency_inputs(spec, 32), tmp_path / "m.onnx")))
    card = tmp_path / "student"
    shutil.copytree(tiny_checkpoint, card / "qat")  # any checkpoint stands in for the QAT one here
    sha = hashlib.sha256((card / "qat" / "model.safetensors").read_bytes()).hexdigest()
    attempt = {"remedy": "qat", "keep_fp": [], "calibration_slices": 4, "bias_correction": False}
    entry = {"attempt": attempt, "qat_weights": {"folder": "qat", "sha256": sha, "step": 300}}
    plan = int8_plan("onnxruntime", graph, spec, {"onnxruntime": entry}, card)
    assert plan.origin == "card (QAT weights)" and plan.qat_weights == (card / "qat").resolve()
    assert plan.qat_weights_sha256 == sha and "step 300" in plan.note
    # TensorRT takes the ONNX Runtime attempt (the same kind of QDQ file).
    assert int8_plan("tensorrt", graph, spec, {"onnxruntime": entry}, card).qat_weights == plan.qat_weights
    # Without the card's folder (an older caller) the scope is applied as PTQ, and the note says so.
    assert int8_plan("onnxruntime", graph, spec, {"onnxruntime": entry}).qat_weights is None
    with pytest.raises(DataError, match="sha256"):
        int8_plan("onnxruntime", graph, spec, {"onnxruntime": entry | {"qat_weights": {"folder": "qat",
                  "sha256": "0" * 64}}}, card)  # fmt: skip
    with pytest.raises(DataError, match="leaves the card"):
        int8_plan("onnxruntime", graph, spec, {"onnxruntime": entry | {"qat_weights": {"folder": "../..",
                  "sha256": sha}}}, card)  # fmt: skip
    (card / "qat" / "model.safetensors").unlink()
    with pytest.raises(DataError, match="missing"):
        int8_plan("onnxruntime", graph, spec, {"onnxruntime": entry}, card)


def test_a_compress_runs_final_model_exports_within_its_recipes_gate(tiny_dataset, tiny_checkpoint, tmp_path):
    """``compressed=DIR``: the final model is found beside report.json wherever compress ran from, and
    the recipe's gate becomes the verification's."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_checkpoint, run / "2-quantize" / "model")
    report = {"final_model": "somewhere/else/run/2-quantize/model", "recipe": {"teacher": "rdn-mr-x2"},
              "gate": {"max_psnr_drop_db": 0.07, "max_ssim_drop": 0.001}, "runs": []}  # fmt: skip
    (run / "report.json").write_text(json.dumps(report))
    out = tmp_path / "exported"
    root = tiny_dataset.path.parent
    argv = [
        "export",
        f"compressed={run}",
        f"out={out}",
        f"data_root={root}",
        "precisions=[fp32]",
        "verify.slices=1",
    ]
    assert main(argv) == 0
    summary = json.loads((out / "export.json").read_text())
    assert summary["profile"]["verify"]["max_psnr_drop_db"] == 0.07
    assert summary["source"]["stage"] == "2-quantize" and summary["source"]["teacher"] == "rdn-mr-x2"


def test_a_gpu_torch_export_is_the_checkpoints_weights_verified_at_half_precision(
    tiny_dataset, tiny_checkpoint, tmp_path
):
    out = tmp_path / "torch"
    argv = ["target=gpu-torch", "verify.slices=1"]
    assert export_cli(tiny_dataset, tiny_checkpoint, out, *argv) == 0
    summary = json.loads((out / "export.json").read_text())
    assert set(summary["artifacts"]) == {"bf16", "fp16"} and summary["onnx_export_seconds"] < 1
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"
    for precision, artifact in summary["artifacts"].items():
        assert artifact["files"] == ["checkpoint.json", "model.safetensors"]
        verification = artifact["verification"]
        assert verification["check"] == "quality" and verification["runtime"] == "torch"
        assert verification["device"].startswith(expected_device)
        assert verification["executed_precision"] == f"{precision}+fp32"
    predictor, manifest = open_artifact(out / "bf16", device="cpu")
    assert manifest.runtime == "torch" and manifest.entry == "model.safetensors"
    lr = torch.rand(1, 1, 15, 13)
    output = predictor({"lr": lr, "base": torch.nn.functional.interpolate(lr, scale_factor=2)})
    assert output.dtype == torch.float32 and output.shape == (1, 1, 30, 26)
    with pytest.raises(ConfigError, match="PyTorch artifacts run at fp32, bf16 or fp16"):
        from edgesr.export.build import _check_buildable

        _check_buildable(load_target("gpu-torch", ["precisions=[int8]"]), "gpu-torch")


def test_a_cpu_torch_export_is_verified_on_the_cpu_at_fp32_by_parity_and_at_bf16_by_quality(
    tiny_dataset, tiny_checkpoint, tmp_path
):
    """``cpu-torch``: the weights again, verified on the CPU even where a GPU is (the target says so)."""
    out = tmp_path / "cpu-torch"
    assert export_cli(tiny_dataset, tiny_checkpoint, out, "target=cpu-torch", "verify.slices=1") == 0
    summary = json.loads((out / "export.json").read_text())
    assert set(summary["artifacts"]) == {"fp32", "bf16"}
    fp32, bf16 = (summary["artifacts"][p]["verification"] for p in ("fp32", "bf16"))
    assert fp32["check"] == "parity" and fp32["device"] == "cpu" and fp32["executed_precision"] == "fp32"
    assert bf16["check"] == "quality" and bf16["device"] == "cpu"
    assert bf16["executed_precision"] == "bf16+fp32" and bf16["psnr_drop_db"] <= 0.3


@pytest.mark.slow
def test_a_compiled_torch_export_is_verified_compiled_and_opens_compiled(
    tiny_dataset, tiny_checkpoint, tmp_path
):
    """``compile=...`` (gpu-torch's compiled mode, TorchInductor): the export is verified under
    torch.compile, the manifest records the mode, and the artifact opens compiled (CPU here: the
    kernels are generated for whatever device runs it)."""
    out = tmp_path / "compiled"
    argv = ["target=cpu-torch", "precisions=[fp32]", "compile=default", "verify.slices=1"]
    assert export_cli(tiny_dataset, tiny_checkpoint, out, *argv) == 0
    manifest = json.loads((out / "fp32" / "manifest.json").read_text())
    assert manifest["graph"] == {"torch_compile": "default"}
    assert manifest["verification"]["check"] == "parity" and manifest["verification"]["relative_error"] < 1e-4
    predictor, _ = open_artifact(out / "fp32", device="cpu")
    assert predictor.compile_mode == "default"
    with pytest.raises(ConfigError, match="compile is for torch artifacts"):
        load_target("cpu-onnxruntime", ["compile=default"])
    with pytest.raises(ConfigError, match="compile"):
        load_target("cpu-torch", ["compile=fastest"])


def test_solver_loops_take_the_dft_op_in_openvino_below_fp32():
    """OpenVINO runs Loop bodies at the compiled precision: MoDL's CG must not do its DFT products in
    BF16 (measured: -4.2 dB), so its OpenVINO BF16/INT8 exports write the DFT op, computed in FP32."""
    from edgesr.export.build import fft_form, has_solver_loops
    from edgesr.models import create_model

    modl, deepcomplex = create_model("modl_tiny"), create_model("deepcomplex_tiny")
    assert has_solver_loops(modl) and not has_solver_loops(deepcomplex)
    assert not has_solver_loops(create_model("rdn_tiny"))
    assert fft_form(load_target("cpu-openvino"), modl) == "dft"
    assert fft_form(load_target("cpu-openvino", ["precisions=[fp32]"]), modl) == "matmul"
    assert fft_form(load_target("cpu-onnxruntime"), modl) == "matmul"
    assert fft_form(load_target("cpu-openvino"), deepcomplex) == "matmul"
