"""A dynamic-size recon export builds its DFT matrices in the graph from the image size; under a BF16
inference precision OpenVINO must still compute those angles in FP32 (:func:`read_onnx` marks them)."""

from __future__ import annotations

import pytest
import torch

from edgesr.export.onnx import export_onnx
from edgesr.export.openvino import _size_only_float_nodes, read_onnx
from tests.export.test_onnx_smoke import _inputs, _tiny_model


def _runtime_precisions(compiled) -> dict[str, str]:
    """Original layer name -> the precision the compiled model executes it in."""
    precisions = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        for name in info["originalLayersNames"].astype(str).split(","):
            if name:
                precisions[name] = info["runtimePrecision"].astype(str)
    return precisions


@pytest.mark.parametrize("name", ["deepcomplex_tiny"])  # MoDL's are in Loop bodies: not honoured there
def test_dft_matrix_angles_stay_float32_under_bf16(name, tmp_path):
    import openvino

    model, spec = _tiny_model(name)
    example = _inputs(name, spec, batch=1, height=20, width=17, seed=3)
    path = export_onnx(model, spec, example, tmp_path / "model.onnx", dynamic=True, fft="matmul")
    ir = read_onnx(path)
    size_only = _size_only_float_nodes(ir)
    assert size_only, "the DFT matrices' size arithmetic was not found"
    marked = size_only
    kinds = set()
    for op in ir.get_ordered_ops():
        if op.get_friendly_name() in size_only:
            kinds.add(op.get_type_name())
        assert not (op.get_type_name() == "Convolution" and op.get_friendly_name() in marked)
    assert {"Cos", "Sin", "Multiply"} <= kinds, kinds
    compiled = openvino.Core().compile_model(
        ir, "CPU", {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": 1}
    )
    executed = _runtime_precisions(compiled)
    computed = [n for n in marked if n in executed and executed[n] not in ("i32", "i64", "u8")]
    assert computed, "none of the marked nodes is in the compiled model"
    assert all(executed[n] == "f32" for n in computed), {n: executed[n] for n in computed}
    # And the result stays close to PyTorch (BF16 convolutions, FP32 angles).
    with torch.no_grad():
        expected = model(*[example[n] for n in spec.input_names]).numpy()
    request = compiled.create_infer_request()
    request.infer({n: example[n].numpy() for n in spec.input_names})
    output = request.get_output_tensor(0).data
    assert abs(output - expected).max() <= 0.05 * abs(expected).max()


def test_sr_models_are_read_unmarked(tmp_path):
    model, spec = _tiny_model("rdn_tiny")
    example = _inputs("rdn_tiny", spec, batch=1, height=9, width=7, seed=3)
    path = export_onnx(model, spec, example, tmp_path / "model.onnx", dynamic=True)
    assert not _size_only_float_nodes(read_onnx(path))
