"""Fixed-shape exports (TensorRT, Jetson): crops of one size that keep SR exact, FFTs as matrix products,
fixed input shapes refused by name, and TensorRT artifacts verified through their ONNX where no engine
can be built."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from edgesr.cli import main
from edgesr.errors import ConfigError
from edgesr.export.artifact import open_artifact
from edgesr.export.onnx import export_onnx
from edgesr.export.onnxruntime import OnnxRuntimePredictor
from edgesr.export.openvino import OpenVinoPredictor
from edgesr.export.targets import load_target
from edgesr.export.tensorrt import tensorrt_missing
from edgesr.models import create_model
from edgesr.physics.fft import dft_as_matmul, fft2c, ifft2c
from edgesr.pipeline import TorchPredictor, infer, prepare_sr
from tests.conftest import export_cli, spec_for


def _tiny_sr() -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    model = create_model("rdn_tiny", scale=2).eval()
    torch.nn.init.normal_(model.to_image.weight, std=0.02)
    return model, spec_for(model, "rdn_tiny")


def test_fixed_crops_are_whole_image_inference_and_small_images_are_padded():
    model, spec = _tiny_sr()
    halo = spec.sr.receptive_radius
    crop = 2 * halo + 7  # tiles of 7 LR pixels: many windows, some moved inwards at the far edges
    image = np.random.default_rng(0).random((2, 41, 33)).astype(np.float32)
    whole = infer(spec, TorchPredictor(model, spec), image, units="raw", reference=1.0)

    fixed = TorchPredictor(model, spec, fixed_lr_size=crop)
    prepared = prepare_sr(spec, image, units="raw", reference=1.0, crop=crop)
    shapes = {tuple(item.inputs["lr"].shape) for item in prepared.items()}
    assert shapes == {(1, 1, crop, crop)}, "every input has the fixed size"
    cropped = infer(spec, fixed, image, units="raw", reference=1.0)  # infer takes the size from the predictor
    np.testing.assert_allclose(cropped, whole, atol=1e-5)

    # An image smaller than the crop is one window padded at the bottom and right: only the pixels within
    # the halo of the padding can differ from whole-image inference.
    small = image[:, : crop - 5, : crop - 3]
    padded = infer(spec, fixed, small, units="raw", reference=1.0)
    reference = infer(spec, TorchPredictor(model, spec), small, units="raw", reference=1.0)
    assert padded.shape == reference.shape == (2, 2 * (crop - 5), 2 * (crop - 3))
    far = 2 * halo
    np.testing.assert_allclose(padded[:, :-far, :-far], reference[:, :-far, :-far], atol=1e-5)
    assert not np.allclose(padded, reference, atol=1e-5), "the padding should show near the far edges"

    with pytest.raises(ConfigError, match="leave no tile inside the model's halo"):
        prepare_sr(spec, image, units="raw", reference=1.0, crop=2 * halo)


def test_a_fixed_shape_artifact_refuses_another_size_by_name(tmp_path):
    model, spec = _tiny_sr()
    inputs = {"lr": torch.rand(1, 1, 20, 20), "base": torch.rand(1, 1, 40, 40)}
    path = export_onnx(model, spec, inputs, tmp_path / "fixed.onnx", dynamic=False)
    predictor = OnnxRuntimePredictor(path, threads=1)
    assert predictor.fixed_lr_size == 20
    with torch.no_grad():
        torch.testing.assert_close(predictor(inputs), model(inputs["lr"], inputs["base"]), atol=1e-5, rtol=0)
    with pytest.raises(
        ValueError, match=r"input 'lr' has shape 1x1x21x20; this artifact was exported for 1x1x20x20"
    ):
        predictor({"lr": torch.rand(1, 1, 21, 20), "base": torch.rand(1, 1, 42, 40)})


def test_the_matmul_dft_is_the_centered_fft_at_odd_sizes():
    x = torch.randn(2, 6, 37, 31)
    for transform in (fft2c, ifft2c):
        expected = transform(x)
        with dft_as_matmul():
            torch.testing.assert_close(transform(x), expected, atol=2e-5, rtol=0)
    with dft_as_matmul():
        torch.testing.assert_close(ifft2c(fft2c(x)), x, atol=2e-5, rtol=0)


def _ops(graph: onnx.GraphProto) -> set[str]:
    """Every op type in a graph and its loop bodies."""
    from edgesr.export.onnx import _all_nodes

    return {node.op_type for node in _all_nodes(graph)}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["deepcomplex_tiny", "modl_tiny"])
def test_dft_and_matmul_exports_agree(name, tmp_path):
    """A recon model exported twice with dynamic sizes: the DFT op, and matrix products with no DFT left
    (MoDL's inside its loops), the matrices built in the graph for each input's size."""
    from tests.export.test_onnx_smoke import _inputs, _randomise, _tiny_model

    model, spec = _tiny_model(name)
    model = _randomise(model, seed=4)
    example = _inputs(name, spec, batch=1, height=24, width=19, seed=5)
    paths = {}
    for form in ("dft", "matmul"):
        paths[form] = export_onnx(model, spec, example, tmp_path / f"{form}.onnx", dynamic=True, fft=form)
        assert ("DFT" in _ops(onnx.load(str(paths[form])).graph)) == (form == "dft")
    for height, width in ((24, 19), (17, 22)):  # the traced size and another, odd and even
        inputs = _inputs(name, spec, batch=1, height=height, width=width, seed=6)
        with torch.no_grad():
            expected = model(*[inputs[n] for n in spec.input_names])
        outputs = {form: OnnxRuntimePredictor(path, threads=1)(inputs) for form, path in paths.items()}
        # OpenVINO too: the DFT op goes through edgesr's axis rewrite (MoDL's in its loop bodies).
        for form, path in paths.items():
            outputs[f"{form} in OpenVINO"] = OpenVinoPredictor(path, threads=1, precision="f32")(inputs)
        scale = float(expected.abs().max())
        for form, output in outputs.items():
            assert float((output - expected).abs().max()) <= 1e-4 * scale, (form, height, width)
        assert float((outputs["dft"] - outputs["matmul"]).abs().max()) <= 1e-4 * scale


def test_tensorrt_profiles_need_fixed_shapes():
    for name in ("gpu-tensorrt", "jetson-orin"):
        target = load_target(name)
        assert target.runtime == "tensorrt" and not target.dynamic_shapes and target.fft == "matmul"
    assert load_target("jetson-orin").build_on_device
    with pytest.raises(ConfigError, match="runtime tensorrt needs dynamic_shapes=false"):
        load_target("gpu-tensorrt", ["dynamic_shapes=true", "fft=dft"])


@pytest.mark.skipif(tensorrt_missing() is None, reason="tensorrt imports here: the engine is built instead")
def test_a_tensorrt_export_without_tensorrt_keeps_the_verified_onnx_and_says_why(
    tiny_dataset, tiny_checkpoint, tmp_path, capsys
):
    out = tmp_path / "trt"
    argv = ["target=gpu-tensorrt", "input_size=40", "verify.slices=1", "verify.max_psnr_drop_db=1.0"]
    assert export_cli(tiny_dataset, tiny_checkpoint, out, *argv, "verify.max_ssim_drop=0.05") == 0
    summary = json.loads((out / "export.json").read_text())
    assert set(summary["artifacts"]) == {"fp16", "int8"}
    for precision, artifact in summary["artifacts"].items():
        verification = artifact["verification"]
        assert verification["runtime"] == "onnxruntime"
        assert verification["engine"]["built"] is False
        assert "tensorrt" in verification["engine"]["reason"] or "CUDA" in verification["engine"]["reason"]
        assert verification["fixed_shape"]["lr_input"] == 20
        assert artifact["files"] == ["model.onnx"], precision
        graph = onnx.load(str(out / precision / "model.onnx")).graph
        lr = next(i for i in graph.input if i.name == "lr")
        assert [d.dim_value for d in lr.type.tensor_type.shape.dim] == [1, 1, 20, 20]
        manifest = json.loads((out / precision / "manifest.json").read_text())
        assert manifest["graph"]["dynamic_shapes"] is False
        assert manifest["graph"]["input_shapes"]["lr"] == [1, 1, 20, 20]
    # The FP16 engine is built from the FP32 graph: checked by parity. INT8 is a symmetric QDQ graph.
    assert summary["artifacts"]["fp16"]["verification"]["check"] == "parity"
    int8 = onnx.load(str(out / "int8" / "model.onnx")).graph
    zero_points = [onnx.numpy_helper.to_array(t) for t in int8.initializer if "zero_point" in t.name]
    assert zero_points and not any(z.any() for z in zero_points), "TensorRT takes zero points of 0 only"
    assert {z.dtype for z in zero_points} <= {np.dtype(np.int8), np.dtype(np.int32)}  # int32: the biases

    with pytest.raises(ConfigError, match="engine was not built"):
        open_artifact(out / "fp16")
    capsys.readouterr()
    assert main(["enhance", f"artifact={out / 'fp16'}", "input=x.png", "output=y.png"]) != 0
    assert "engine was not built" in capsys.readouterr().err


@pytest.mark.tensorrt
@pytest.mark.skipif(tensorrt_missing() is not None, reason=f"no TensorRT engine here: {tensorrt_missing()}")
def test_a_tensorrt_engine_matches_onnx_runtime(tmp_path):  # pragma: no cover - needs TensorRT and a GPU
    from edgesr.export.tensorrt import TensorRTPredictor, build_engine

    model, spec = _tiny_sr()
    inputs = {"lr": torch.rand(1, 1, 20, 20), "base": torch.rand(1, 1, 40, 40)}
    path = export_onnx(model, spec, inputs, tmp_path / "fixed.onnx", dynamic=False)
    record = build_engine(path, tmp_path / "model.plan", precision="fp32")
    assert record["flags"] == []
    engine = TensorRTPredictor(tmp_path / "model.plan")
    torch.testing.assert_close(engine(inputs), OnnxRuntimePredictor(path)(inputs), atol=1e-4, rtol=0)


def test_a_fixed_shape_recon_model_is_scored_on_slices_of_its_size_only(tiny_dataset):
    from edgesr.errors import DataError
    from edgesr.evaluate import recon_samples, score_predictor
    from tests.export.test_onnx_smoke import _tiny_model

    model, spec = _tiny_model("deepcomplex_tiny")
    sample, _ = next(
        iter(recon_samples(tiny_dataset, acceleration=4.0, n_coils=4, split="test", max_slices=1))
    )
    size = tuple(sample.kspace.shape[-2:])
    predictor = TorchPredictor(model, spec)
    scores = score_predictor(spec, predictor, tiny_dataset, split="test", max_slices=1, kspace_shape=size)
    assert scores["slices"] >= 1
    with pytest.raises(DataError, match="has no slice of 5x7 k-space"):
        score_predictor(spec, predictor, tiny_dataset, split="test", max_slices=1, kspace_shape=(5, 7))


@pytest.mark.skipif(tensorrt_missing() is None, reason="tensorrt imports here: the engine is built instead")
@pytest.mark.parametrize("name", ["modl_tiny", "deepcomplex_tiny"])
def test_a_recon_model_exports_for_the_jetson_as_fixed_matmul_onnx_verified_in_onnx_runtime(
    name, tiny_dataset, tmp_path
):
    """What `edgesr export target=jetson-orin` writes for a recon model where no engine can be built:
    the whole unrolled model (data consistency, MoDL's unroll loop) at the data's fixed size, FFTs as
    matrix products (no DFT op: TensorRT before 11.2 has none), FP16 checked by parity and INT8 as a
    symmetric QDQ graph, both run in ONNX Runtime on real slices."""
    from tests.conftest import save_model
    from tests.export.test_onnx_smoke import _tiny_model

    model, _ = _tiny_model(name)
    options = {"coils": 4} if name == "deepcomplex_tiny" else {}
    checkpoint = save_model(tmp_path / name, model, name, options)
    out = tmp_path / "jetson"
    argv = [
        "target=jetson-orin",
        "verify.slices=1",
        "verify.max_psnr_drop_db=3.0",
        "verify.max_ssim_drop=0.2",
    ]
    assert export_cli(tiny_dataset, checkpoint, out, *argv) == 0
    summary = json.loads((out / "export.json").read_text())
    assert set(summary["artifacts"]) == {"fp16", "int8"}
    assert summary["artifacts"]["fp16"]["verification"]["check"] == "parity"
    for precision, artifact in summary["artifacts"].items():
        verification = artifact["verification"]
        assert verification["runtime"] == "onnxruntime" and verification["engine"]["built"] is False
        graph = onnx.load(str(out / precision / "model.onnx")).graph
        ops = {node.op_type for node in graph.node}
        assert "DFT" not in ops, precision
        shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
        assert all(all(d > 0 for d in dims) for dims in shapes.values()), shapes  # fixed, no symbols
        if name == "modl_tiny":
            assert "Loop" in ops  # the unrolls, once, looped: not the body copied K times
    graphs = _graphs(onnx.load(str(out / "int8" / "model.onnx")).graph)
    convs = [node.name for graph in graphs for node in graph.node if node.op_type == "Conv"]
    if name == "deepcomplex_tiny":
        # Its 2-layer blocks sit between data-consistency steps that read the inputs: every conv is
        # the first or last next to an input or output, all kept in float by the default scope.
        assert sorted(summary["artifacts"]["int8"]["verification"]["int8"]["keep_fp"]) == sorted(convs)
        return
    # MoDL: its unrolls written out (the quantizers skip Loop bodies), the denoisers' convs quantized
    # between the ends kept in float; the CG steps stay Loops.
    assert "Loop" in {node.op_type for node in graphs[0].node}
    assert all(graph is graphs[0] for graph in graphs if any(n.op_type == "Conv" for n in graph.node))
    assert any(node.op_type == "QuantizeLinear" for graph in graphs for node in graph.node)
    zero_points = [
        onnx.numpy_helper.to_array(t) for graph in graphs for t in graph.initializer if "zero_point" in t.name
    ]
    assert zero_points and not any(z.any() for z in zero_points), "TensorRT takes zero points of 0 only"


def _graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """``graph`` and every subgraph (Loop/If bodies) inside it."""
    found = [graph]
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                found += _graphs(attribute.g)
    return found
