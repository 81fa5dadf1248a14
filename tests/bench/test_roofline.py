"""The roofline estimator: operation counts, Loop bodies, quantized convolutions, and its labelling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgesr.bench import roofline
from edgesr.bench.devices import load_device
from edgesr.bench.roofline import EstimatorNotCalibrated, Peaks, estimate_artifact, estimate_graph
from edgesr.bench.timing import latency_inputs
from edgesr.errors import ConfigError
from edgesr.export.onnx import export_onnx
from edgesr.models import create_model
from tests.conftest import export_cli, spec_for

PEAKS = Peaks(
    gmacs={"fp32": 100.0, "bf16": 1000.0, "fp16": 1000.0, "int8": 2000.0}, memory_gb_s=10.0, source="test"
)


def _conv_macs(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """Multiply-accumulates of the module's convolutions on one forward pass, counted by hooks."""
    total = 0

    def count(conv: torch.nn.Conv2d, _: object, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * conv.weight[0].numel()

    hooks = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        module(*inputs)
    for hook in hooks:
        hook.remove()
    return total


def _shapes(inputs: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in inputs.items()}


def test_convolution_macs_match_a_count_by_hooks_at_an_odd_size(tmp_path):
    torch.manual_seed(0)
    model = create_model("rdn_tiny", scale=2).eval()
    spec = spec_for(model, "rdn_tiny")
    path = export_onnx(model, spec, latency_inputs(spec, 32), tmp_path / "m.onnx")
    inputs = latency_inputs(spec, 46, width=38)  # another size than the export's example
    estimate = estimate_graph(path, _shapes(inputs), PEAKS, float_precision="fp32")
    conv_macs = sum(op.macs for op in estimate.ops if op.kind == "Convolution")
    assert conv_macs == _conv_macs(model, tuple(inputs.values()))
    assert estimate.seconds > 0 and {op.precision for op in estimate.ops} == {"fp32"}


def test_loop_bodies_count_once_per_iteration(tmp_path):
    """MoDL exports its unrolls and CG steps as nested ONNX Loops: 2 unrolls x 3 CG steps here."""
    model = create_model("modl_tiny", iterations=2, cg_iterations=3).eval()
    spec = spec_for(model, "modl_tiny")
    path = export_onnx(model, spec, latency_inputs(spec, 24, coils=2), tmp_path / "modl.onnx", fft="dft")
    inputs = latency_inputs(spec, 24, coils=2)
    estimate = estimate_graph(path, _shapes(inputs), PEAKS, float_precision="fp32")
    convs = [op for op in estimate.ops if op.kind == "Convolution"]
    assert convs and {op.times for op in convs} == {2}  # the shared denoiser, once per unroll
    ffts = {op.times for op in estimate.ops if op.kind in ("DFT", "IDFT")}
    assert 2 * 3 in ffts  # the normal operator inside each CG step
    one_pass = _conv_macs(model.denoiser, (torch.zeros(1, 2, 24, 24),))
    assert sum(op.macs * op.times for op in convs) == 2 * one_pass


def _qdq_conv(path: Path, channels: int = 16, size: int = 32) -> Path:
    """x -> QuantizeLinear -> DequantizeLinear -> Conv(int8 weights, dequantized) -> y: standard QDQ."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).integers(-100, 100, (channels, channels, 3, 3)).astype(np.int8)
    initializers = [
        numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "x_zero"),
        numpy_helper.from_array(weight, "w_q"),
        numpy_helper.from_array(np.array(0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "w_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"]),
        helper.make_node("Conv", ["x_dq", "w"], ["y"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, size, size])], initializers,
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_a_qdq_convolution_runs_at_the_int8_peak_and_its_qdq_pairs_cost_nothing(tmp_path):
    path = _qdq_conv(tmp_path / "qdq.onnx")
    estimate = estimate_graph(path, {}, PEAKS, float_precision="fp32")
    assert [(op.kind, op.precision) for op in estimate.ops] == [("Convolution", "int8")]
    conv = estimate.ops[0]
    assert conv.macs == 32 * 32 * 16 * 16 * 9
    # int8 activations and weights in, float out: the bytes the bound is made of
    assert conv.bytes == 16 * 32 * 32 * 1 + 16 * 16 * 9 * 1 + 16 * 32 * 32 * 4


def test_each_operation_is_bound_by_the_slower_of_compute_and_memory(tmp_path):
    path = _qdq_conv(tmp_path / "qdq.onnx", channels=64, size=48)
    conv_macs = 48 * 48 * 64 * 64 * 9
    slow_compute = Peaks(gmacs={"int8": 1.0, "fp32": 1.0}, memory_gb_s=1e6, source="test")
    estimate = estimate_graph(path, {}, slow_compute, float_precision="fp32")
    assert estimate.seconds == pytest.approx(conv_macs / 1e9)
    assert estimate.ops[0].bound == "compute"
    slow_memory = Peaks(gmacs={"int8": 1e9, "fp32": 1e9}, memory_gb_s=1.0, source="test")
    estimate = estimate_graph(path, {}, slow_memory, float_precision="fp32")
    assert estimate.seconds == pytest.approx(estimate.bytes / 1e9)
    assert estimate.ops[0].bound == "memory"


def test_the_cpu_peaks_are_never_below_what_this_cpu_reaches():
    """A peak that a measured product exceeds would bound nothing (a VM reports its base clock)."""
    peaks = roofline.cpu_peaks(1)
    reached = roofline.measure_fp32_gmacs(1)
    assert peaks.gmacs["fp32"] >= reached * 0.9  # the two probes run moments apart
    assert peaks.gmacs["int8"] >= peaks.gmacs["bf16"] >= peaks.gmacs["fp32"] > 0
    assert peaks.memory_gb_s > 0 and "MHz" in peaks.source


def test_a_profile_without_peak_figures_cannot_estimate():
    profile = load_device("jetson-orin-nano", ["peak.memory_gb_s=0"])
    with pytest.raises(ConfigError, match="no peak figures"):
        roofline.profile_peaks(profile.peak, profile.threads, "jetson-orin-nano")


def test_no_estimate_before_the_estimators_error_was_measured(tmp_path):
    with pytest.raises(EstimatorNotCalibrated, match="has not been measured"):
        roofline.error_record(tmp_path / "missing.json")
    (tmp_path / "empty.json").write_text(json.dumps({"entries": []}))
    with pytest.raises(EstimatorNotCalibrated, match="no measurements"):
        roofline.error_record(tmp_path / "empty.json")


@pytest.fixture
def exported(tiny_dataset, tiny_checkpoint, tmp_path) -> Path:
    out = tmp_path / "exported"
    assert export_cli(tiny_dataset, tiny_checkpoint, out, "precisions=[fp32]", "verify.slices=1") == 0
    return out / "fp32"


@pytest.fixture
def exported_for_tensorrt(tiny_dataset, tiny_checkpoint, tmp_path) -> Path:
    """The FP16 artifact of the gpu-tensorrt target: its verified ONNX (no TensorRT here to build it)."""
    out = tmp_path / "trt"
    argv = ["target=gpu-tensorrt", "precisions=[fp16]", "input_size=40", "verify.slices=1"]
    assert export_cli(tiny_dataset, tiny_checkpoint, out, *argv, "verify.max_psnr_drop_db=1.0") == 0
    return out / "fp16"


def _record(path: Path, ratios: list[float], *, gpu_ratios: tuple[float, ...] = ()) -> Path:
    entries = [{"runtime": "onnxruntime", "precision": "fp32", "kind": "cpu", "ratio": r} for r in ratios]
    # Measured on a lent GPU and recorded (benchmarks/roofline_error.py --recorded): its own machine.
    entries += [
        {
            "runtime": "torch",
            "precision": "bf16",
            "kind": "cuda",
            "ratio": r,
            "measured_on": {"gpu": "a test GPU"},
        }
        for r in gpu_ratios
    ]
    path.write_text(json.dumps({"date": "today", "machine": {"cpu": "a test CPU"}, "entries": entries}))
    return path


def test_an_absent_device_gets_a_labelled_figure_and_no_borrowed_error(
    exported_for_tensorrt, tmp_path, monkeypatch, capsys
):
    from edgesr.cli import main

    record = _record(tmp_path / "error.json", [2.0, 3.0, 5.0], gpu_ratios=(10.0, 40.0))
    monkeypatch.setattr(roofline, "ERROR_RECORD", record)
    out = tmp_path / "estimate"
    argv = [
        "bench",
        f"artifact={exported_for_tensorrt}",
        "device=jetson-orin-nano",
        "estimate=true",
        f"out={out}",
    ]
    assert main(argv) == 0  # no Jetson here: estimated, never measured
    result = json.loads((out / "estimate.json").read_text())
    assert result["estimated"] is True and result["device"] == "jetson-orin-nano"
    assert "Orin Nano" in result["peaks"]["source"] and result["estimated_bound_ms"] > 0
    assert result["estimated_p50_ms"] is None and "never measured on a jetson" in result["note"]
    assert result["float_precision"] == "fp16" and result["costliest_ops"]
    assert result["input_shapes"]["lr"] == [1, 1, 20, 20]  # the engine's fixed size, not the profile's
    assert result["uncounted_ops"] == []
    # A GPU measured with torch is not a Jetson with TensorRT: shown, never used to scale the bound.
    by_kind = result["estimator_error"]["by_kind"]
    assert by_kind["cuda"] == {
        "measured_on": ["a test GPU"],
        "by_runtime": {
            k: {"median": 25.0, "min": 10.0, "max": 40.0, "count": 2} for k in ("all", "torch", "torch/bf16")
        },
    }
    assert by_kind["cpu"]["measured_on"] == ["a test CPU"]
    captured = capsys.readouterr()
    printed = " ".join((captured.out + captured.err).split())
    assert "ESTIMATED, not measured" in printed
    assert "on cuda (a test GPU): torch 25.00x (10.00-40.00, n=2)" in printed
    assert "on cpu (a test CPU): onnxruntime 3.00x" in printed
    assert not (out / "bench.json").exists()


def test_an_artifact_of_another_runtime_is_refused(exported, tmp_path, monkeypatch, capsys):
    from edgesr.cli import main

    monkeypatch.setattr(roofline, "ERROR_RECORD", _record(tmp_path / "error.json", [2.0]))
    assert main(["bench", f"artifact={exported}", "device=jetson-orin-nano", "estimate=true"]) != 0
    assert "is an artifact for onnxruntime" in capsys.readouterr().err


def test_a_measured_kind_of_device_scales_the_bound_by_the_measured_ratios(exported, tmp_path):
    record = json.loads(_record(tmp_path / "error.json", [2.0, 3.0, 5.0]).read_text())
    profile = load_device("cpu-onnxruntime")
    result = estimate_artifact(exported, profile, device_name="cpu-onnxruntime", record=record)
    bound = result["estimated_bound_ms"]
    likely = result["estimated_p50_ms"]
    assert likely["median"] == pytest.approx(3 * bound, rel=1e-3)
    assert (likely["low"], likely["high"]) == (
        pytest.approx(2 * bound, rel=1e-3),
        pytest.approx(5 * bound, rel=1e-3),
    )
    assert result["estimator_error"]["by_runtime"]["onnxruntime/fp32"]["count"] == 3
    assert likely["of"] == "cpu onnxruntime fp32"


def test_estimate_needs_an_artifact(tiny_checkpoint, capsys):
    from edgesr.cli import main

    assert main(["bench", f"checkpoint={tiny_checkpoint}", "device=jetson-orin-nano", "estimate=true"]) != 0
    assert "export the model first" in capsys.readouterr().err


def _save(path: Path, nodes: list, inputs: list, outputs: list, initializers: list) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_a_batched_matrix_product_counts_outputs_times_the_contracted_length(tmp_path):
    """As the FFTs as matrix products: [B, C, H, W] @ W^T."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((40, 40), np.float32), "w")
    nodes = [
        helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "wt"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 30, 40])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8, 30, 40])
    path = _save(tmp_path / "mm.onnx", nodes, [x], [y], [weight])
    estimate = estimate_graph(path, {}, PEAKS, float_precision="fp32")
    (matmul,) = [op for op in estimate.ops if op.kind == "MatMul"]
    assert matmul.macs == 2 * 8 * 30 * 40 * 40 and matmul.precision == "fp32"


def test_a_loop_of_constant_trip_count_counts_its_body_that_many_times(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["state_in", "w"], ["state_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_in", TensorProto.FLOAT, [64, 64]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [64, 64]),
        ],
    )
    initializers = [
        numpy_helper.from_array(np.array(7, np.int64), "trips"),
        numpy_helper.from_array(np.array(True), "go"),
        numpy_helper.from_array(np.eye(64, dtype=np.float32), "w"),
    ]
    nodes = [helper.make_node("Loop", ["trips", "go", "x"], ["y"], body=body)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 64])
    path = _save(tmp_path / "loop.onnx", nodes, [x], [y], initializers)
    estimate = estimate_graph(path, {}, PEAKS, float_precision="fp32")
    (matmul,) = [op for op in estimate.ops if op.kind == "MatMul"]
    assert matmul.times == 7 and matmul.macs == 64 * 64 * 64
