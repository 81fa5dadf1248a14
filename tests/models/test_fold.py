"""The SR tail folded before the last sub-pixel shuffle computes the same function (edgesr.models.fold)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from edgesr.models import create_model
from edgesr.models.fold import (
    ShuffledConv,
    conv_before_shuffle,
    fold_subpixel_tail,
    foldable,
    has_subpixel_tail,
)
from edgesr.pipeline import TorchPredictor
from edgesr.teachers import teacher_path
from edgesr.train.checkpoint import load_for_inference


def _randomised(model: nn.Module) -> nn.Module:
    """Non-zero weights everywhere (the builders zero ``to_image``, which would hide a wrong fold)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model.eval()


@pytest.mark.parametrize("kernel", [1, 3, 5, 9])
@pytest.mark.parametrize("scale", [2, 3])
def test_conv_before_shuffle_equals_conv_after_it(kernel: int, scale: int) -> None:
    conv = _randomised(nn.Conv2d(5, 2, kernel, padding=kernel // 2))
    coarse = torch.randn(2, 5 * scale * scale, 7, 6)  # odd sizes: the borders are where a fold goes wrong
    folded = conv_before_shuffle(conv, scale)
    assert folded.out_channels == 2 * scale * scale and folded.in_channels == 5 * scale * scale
    with torch.no_grad():
        expected = conv(F.pixel_shuffle(coarse, scale))
        got = F.pixel_shuffle(folded(coarse), scale)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


MODELS = [("rdn_tiny", 2), ("rdn_tiny", 3), ("rdn_tiny", 4), ("srgan_tiny", 4), ("srgan_tiny", 2)]


@pytest.mark.parametrize(("name", "scale"), MODELS)
def test_folded_models_give_the_same_image(name: str, scale: int) -> None:
    model = _randomised(create_model(name, scale=scale))
    folded = fold_subpixel_tail(model, min_kernel=1)  # RDN's 3x3 tail too (not folded by default)
    assert isinstance(folded.to_image, ShuffledConv)
    assert isinstance(model.to_image, nn.Conv2d), "the trained model keeps its structure"
    lr = torch.rand(1, 1, 11, 9)
    base = F.interpolate(lr, scale_factor=scale)
    with torch.no_grad():
        got, expected = folded(lr, base), model(lr, base)
    # Float rounding of sums taken in another order: relative to the output's range.
    assert float((got - expected).abs().max()) < 1e-5 * float(expected.abs().max())


def test_srgan_prelu_slopes_follow_their_channels() -> None:
    model = _randomised(create_model("srgan_tiny", scale=2))
    prelu = model.upsample[-1]
    assert isinstance(prelu, nn.PReLU) and prelu.num_parameters == 8
    folded = fold_subpixel_tail(model)
    slopes = folded.to_image.activation.weight
    assert slopes.shape == (32,)
    torch.testing.assert_close(slopes[4:8], prelu.weight[1].expand(4))


def test_models_without_the_tail_are_returned_unchanged() -> None:
    modl = create_model("modl_tiny")
    assert not has_subpixel_tail(modl) and fold_subpixel_tail(modl) is modl
    rdn = create_model("rdn_tiny", scale=2)  # a 3x3 tail: measured no faster folded (MIN_KERNEL)
    assert not has_subpixel_tail(rdn) and fold_subpixel_tail(rdn) is rdn
    assert has_subpixel_tail(create_model("srgan_tiny", scale=4))
    strided = nn.Conv2d(4, 1, 3, padding=1, stride=2)
    assert not foldable(strided)
    with pytest.raises(ValueError, match="stride-1"):
        conv_before_shuffle(strided, 2)


def test_the_predictor_runs_the_folded_copy_of_a_shipped_student() -> None:
    model, spec, _ = load_for_inference(teacher_path("srgan-mr-x4-edge"))
    predictor = TorchPredictor(model, spec, "cpu")
    assert predictor.folded and isinstance(model.to_image, nn.Conv2d)
    lr = torch.rand(1, 1, 24, 20)
    base = F.interpolate(lr, scale_factor=4)
    unfolded = TorchPredictor(model, spec, "cpu", fold=False)
    got, expected = predictor({"lr": lr, "base": base}), unfolded({"lr": lr, "base": base})
    assert float((got - expected).abs().max()) < 1e-5 * float(expected.abs().max())


def test_an_srgan_export_holds_the_folded_tail_in_float_and_the_trained_one_in_int8(tiny_dataset, tmp_path):
    """``edgesr export`` of an SRGAN generator: the float file ends Conv -> DepthToSpace (folded) and
    matches the module as trained; the INT8 file is quantized from the graph as trained (its cards' layer
    names); the manifest says which precisions fold."""
    import json

    import onnx

    from edgesr.export.artifact import open_artifact
    from tests.conftest import export_cli, save_model

    model = _randomised(create_model("srgan_tiny", scale=2))
    checkpoint = save_model(tmp_path / "ckpt", model, "srgan_tiny", {"scale": 2, "upsampler": "zero-fill"})
    out = tmp_path / "exported"
    argv = [
        "target=cpu-onnxruntime",
        "precisions=[fp32,int8]",
        "verify.slices=1",
        "verify.max_psnr_drop_db=100",
    ]
    assert export_cli(tiny_dataset, checkpoint, out, *argv, "verify.max_ssim_drop=1") == 0

    def ops(path) -> list[str]:
        nodes = onnx.load(str(path)).graph.node
        return [node.op_type for node in nodes if node.op_type in ("Conv", "DepthToSpace")]

    assert ops(out / "fp32" / "model.onnx")[-2:] == ["Conv", "DepthToSpace"]
    assert ops(out / "int8" / "model.onnx")[-2:] == ["DepthToSpace", "Conv"]
    predictor, manifest = open_artifact(out / "fp32")
    assert manifest.graph["subpixel_tail_folded"] == ["fp32"]
    assert json.loads((out / "int8" / "manifest.json").read_text())["graph"]["subpixel_tail_folded"] == [
        "fp32"
    ]
    lr = torch.rand(1, 1, 15, 11)
    base = F.interpolate(lr, scale_factor=2)
    with torch.no_grad():
        expected = model.eval()(lr, base)
    got = predictor({"lr": lr, "base": base})
    assert float((got - expected).abs().max()) < 1e-4 * float(expected.abs().max())


def test_the_fold_keeps_the_models_dtype() -> None:
    model = _randomised(create_model("srgan_tiny", scale=2)).double()
    folded = fold_subpixel_tail(model)
    assert folded.to_image.conv.weight.dtype == torch.float64
    assert folded.to_image.activation.weight.dtype == torch.float64
    lr = torch.rand(1, 1, 9, 7, dtype=torch.float64)
    base = F.interpolate(lr, scale_factor=2)
    with torch.no_grad():
        got, expected = folded(lr, base), model(lr, base)
    assert float((got - expected).abs().max()) < 1e-10 * float(expected.abs().max())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; torch sees none")
def test_the_fold_builds_its_layers_on_the_models_device() -> None:
    model = _randomised(create_model("srgan_tiny", scale=4)).cuda()
    folded = fold_subpixel_tail(model)
    assert folded.to_image.conv.weight.is_cuda and folded.to_image.activation.weight.is_cuda
    lr = torch.rand(1, 1, 9, 7, device="cuda")
    base = F.interpolate(lr, scale_factor=4)
    with torch.no_grad():
        got, expected = folded(lr, base), model(lr, base)
    assert float((got - expected).abs().max()) < 1e-4 * float(expected.abs().max())
