"""OpenVINO 2026.4 ignores the ONNX DFT op's ``axis`` input and transforms axis 1; edgesr rewrites each
DFT over another axis as transpose -> DFT(axis 1) -> transpose before OpenVINO reads the file."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgesr.export.openvino import OpenVinoPredictor, dft_axes_to_one

SHAPE = (1, 2, 12, 10, 2)  # [B, C, H, W, re/im]: the layout the dynamo exporter gives torch.fft


def _dft_file(path, axis: int, *, inverse: int = 0) -> None:
    graph = helper.make_graph(
        [helper.make_node("DFT", ["x", "", "axis"], ["y"], inverse=inverse, onesided=0, name="dft")],
        "dft",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(SHAPE))],
        initializer=[numpy_helper.from_array(np.array(axis, dtype=np.int64), "axis")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(path))


@pytest.mark.parametrize(("axis", "inverse"), [(2, 0), (3, 0), (-2, 0), (-3, 1), (1, 0)])
def test_a_dft_over_any_axis_runs_in_openvino_as_numpy_computes_it(tmp_path, axis, inverse):
    import torch

    path = tmp_path / "dft.onnx"
    _dft_file(path, axis, inverse=inverse)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
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
        assert ops == (["Transpose", "DFT", "Transpose"] if moved else ["DFT"])
