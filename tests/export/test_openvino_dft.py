"""OpenVINO 2026.4 ignores the ONNX DFT op's ``axis`` input and transforms axis 1; edgesr rewrites each
DFT over another axis as transpose -> DFT(axis 1) -> transpose before OpenVINO reads the file."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgesr.export.openvino import OpenVinoPredictor, dft_axes_to_one

SHAPE = (1, 2, 12, 10, 2)  # [B, C, H, W, re/im]: the layout the dynamo exporter gives torch.fft


def _dft_file(path, axis: int | None, *, inverse: int = 0) -> None:
    """One DFT node; ``axis=None`` leaves out the axis input (opset 20's default, -2)."""
    inputs = ["x", "", "axis"] if axis is not None else ["x"]
    axes = [] if axis is None else [numpy_helper.from_array(np.array(axis, dtype=np.int64), "axis")]
    graph = helper.make_graph(
        [helper.make_node("DFT", inputs, ["y"], inverse=inverse, onesided=0, name="dft")],
        "dft",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(SHAPE))],
        initializer=axes,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(path))


@pytest.mark.parametrize(("axis", "inverse"), [(2, 0), (3, 0), (-2, 0), (-3, 1), (1, 0), (None, 0)])
def test_a_dft_over_any_axis_runs_in_openvino_as_numpy_computes_it(tmp_path, axis, inverse):
    import torch

    path = tmp_path / "dft.onnx"
    _dft_file(path, axis, inverse=inverse)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    axis = -2 if axis is None else axis  # opset 20's default: the last signal axis
    signal_axis = axis + len(SHAPE) if axis < 0 else axis
    complex_x = x[..., 0] + 1j * x[..., 1]
    # ONNX's inverse DFT divides by n, as numpy's ifft does.
    transform = np.fft.ifft if inverse else np.fft.fft
    expected = transform(complex_x, axis=signal_axis)
    output = OpenVinoPredictor(path, threads=1, precision="f32")({"x": torch.from_numpy(x)}).numpy()
    np.testing.assert_allclose(output[..., 0] + 1j * output[..., 1], expected, atol=1e-4)


def test_the_rewrite_touches_only_dfts_over_other_axes(tmp_path):
    for axis, moved in [(3, 1), (1, 0)]:
        _dft_file(tmp_path / "dft.onnx", axis)
        model = onnx.load(str(tmp_path / "dft.onnx"))
        assert dft_axes_to_one(model) == moved
        onnx.checker.check_model(model)
        ops = [node.op_type for node in model.graph.node]
        assert ops == (["Constant", "Transpose", "DFT", "Transpose"] if moved else ["DFT"])


def _dft_in_a_loop_file(path, trips: int) -> None:
    """A Loop whose body holds a DFT over axis 2 in opset 17's form (an ``axis`` attribute), as the
    dynamo exporter writes the FFTs of a loop body in a file that declares opset 20."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("DFT", ["carried_in"], ["carried_out"], axis=2, onesided=0, name="dft"),
        ],
        "body",
        [
            helper.make_tensor_value_info("step", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("carried_in", TensorProto.FLOAT, list(SHAPE)),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("carried_out", TensorProto.FLOAT, list(SHAPE)),
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "keep_going", "x"], ["y"], body=body, name="loop")],
        "loop",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(SHAPE))],
        initializer=[
            numpy_helper.from_array(np.array(trips, dtype=np.int64), "trips"),
            numpy_helper.from_array(np.array(True), "keep_going"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(path))


def test_dfts_in_a_loop_body_are_made_opset_20_and_run_in_both_runtimes(tmp_path):
    import torch

    from edgesr.export.onnx import dft_axis_as_input
    from edgesr.export.onnxruntime import OnnxRuntimePredictor

    _dft_in_a_loop_file(tmp_path / "raw.onnx", trips=2)
    model = onnx.load(str(tmp_path / "raw.onnx"))
    assert dft_axis_as_input(model) == 1
    assert dft_axis_as_input(model) == 0, "a second pass finds nothing left to rewrite"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(tmp_path / "loop.onnx"))

    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    complex_x = x[..., 0] + 1j * x[..., 1]
    expected = np.fft.fft(np.fft.fft(complex_x, axis=2), axis=2)  # two trips
    feeds = {"x": torch.from_numpy(x)}
    for predictor in (
        OnnxRuntimePredictor(tmp_path / "loop.onnx", threads=1),
        # OpenVINO reads the loop body's DFT through edgesr's axis rewrite, which walks subgraphs too.
        OpenVinoPredictor(tmp_path / "loop.onnx", threads=1, precision="f32"),
    ):
        output = predictor(feeds).numpy()
        np.testing.assert_allclose(output[..., 0] + 1j * output[..., 1], expected, atol=1e-3)
