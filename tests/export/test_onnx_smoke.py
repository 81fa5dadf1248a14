"""ONNX export smoke test for every registered model family: export, run in ONNX Runtime and OpenVINO
(f32), compare to torch.

One tiny preset per family (derived from ``list_models()``), odd sizes, non-trivial random weights, and
other batch sizes and odd sizes from the same file to prove the dynamic axes. The recon models' FFTs are
exported in the default form, matrix products built for each input size (the DFT op form is checked
against it in test_fixed_shapes). Errors measured on 2 CPU cores with onnxruntime 1.32 and the DFT op
(max-abs error / max |torch output|, at 37x31 and 29x43): rdn_tiny and srgan_tiny 2-5e-7;
deepcomplex_tiny and modl_tiny 0.8-1.4e-5, from ONNX Runtime's DFT, which is far less exact at
non-power-of-two sizes (~1e-4 of the scale for one FFT at 320x320, where torch's float32 FFT stays
~2e-7). The tolerance, 1e-4 of the output's scale, leaves a 7x margin even there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgesr.export.onnx import export_onnx
from edgesr.export.onnxruntime import OnnxRuntimePredictor
from edgesr.export.openvino import OpenVinoPredictor
from edgesr.models import create_model, list_models, model_task
from edgesr.physics.coils import simulate_coil_maps
from edgesr.physics.masks import cartesian_mask
from edgesr.physics.mri import MultiCoilSense
from edgesr.spec import ModelSpec, recon_spec, sr_spec

TINY = [name for name in list_models() if name.endswith("_tiny")]
# Exports measured over ~20 s on 2 cores (rdn_tiny 6 s, srgan_tiny 4 s): modl_tiny 125 s when its loops were
# unrolled (now ONNX Loops: 77 s for the whole test, beside a training run), deepcomplex_tiny 23 s. Dynamic
# shapes cost most (symbolic shape reasoning through every FFT), then onnxscript's optimizer.
SLOW = {"modl_tiny", "deepcomplex_tiny"}
RELATIVE_TOLERANCE = 1e-4
MODL_COILS = 3  # MoDL takes any number of coils; deliberately not deepcomplex_tiny's 4


def _family(name: str) -> str:
    return name.split("_")[0]


def test_every_family_has_a_tiny_preset() -> None:
    """A new family must bring a ``_tiny`` preset, or the smoke test below would silently skip it."""
    families = {_family(name) for name in list_models()}
    assert families == {_family(name) for name in TINY}


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Perturbs every parameter and the BN statistics, seeded.

    The models zero-initialise their last convs (an untrained model is its skip path: the interpolated
    ``base``, CG-SENSE, the zero-filled image), which would make a broken network branch invisible.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.normal_(0.0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
    assert all(float(p.detach().abs().sum()) > 0 for p in model.parameters())
    return model.eval()


def _tiny_model(name: str) -> tuple[nn.Module, ModelSpec]:
    torch.manual_seed(0)
    model = _randomise(create_model(name), seed=1)
    if model_task(name) == "sr":
        scale = int(model.scale)
        # The receptive radius only matters to tiled inference, not to the export.
        spec = sr_spec(
            modality="MR", scale=scale, degradation="mr-kspace", upsampler="zero-fill", receptive_radius=8
        )
    else:
        # As the training loop records them: deepcomplex needs its own coil count, MoDL takes any.
        spec = recon_spec(coils=int(getattr(model, "coils", 0)))
    return model, spec


def _inputs(
    name: str, spec: ModelSpec, batch: int, height: int, width: int, seed: int
) -> dict[str, torch.Tensor]:
    """Realistic inputs of one size: SR ``lr`` and its bicubic ``base``; recon k-space of a random image
    through simulated coil maps and a Cartesian mask (a few sampled columns, the rest 0)."""
    generator = torch.Generator().manual_seed(seed)
    if spec.sr is not None:
        lr = torch.rand(batch, 1, height, width, generator=generator)
        base = F.interpolate(lr, scale_factor=spec.sr.scale, mode="bicubic", align_corners=False)
        return {"lr": lr, "base": base}
    assert spec.recon is not None
    coils = spec.recon.coils or MODL_COILS
    maps = torch.stack([simulate_coil_maps(height, width, coils, seed=seed + b) for b in range(batch)])
    mask = (
        cartesian_mask(width, 4, center_fraction=0.15, seed=seed).view(1, 1, 1, width).repeat(batch, 1, 1, 1)
    )
    image = torch.randn(batch, 2, height, width, generator=generator)
    kspace = MultiCoilSense().A(image, mask, maps)
    assert 0 < float(mask.sum()) < mask.numel() / 2, "the mask should sample a few columns"
    return {"masked_kspace": kspace, "mask": mask, "sens_maps": maps}


def _assert_close(predicted: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert predicted.shape == expected.shape, (
        f"{what}: shape {tuple(predicted.shape)} != {tuple(expected.shape)}"
    )
    assert predicted.dtype == torch.float32
    error = float((predicted - expected).abs().max())
    scale = float(expected.abs().max())
    assert scale > 0
    assert error <= RELATIVE_TOLERANCE * scale, (
        f"{what}: max-abs error {error:.3g} on outputs of scale {scale:.3g}"
    )


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in TINY])
def test_onnx_export_matches_torch_at_two_sizes(name: str, tmp_path: Path) -> None:
    model, spec = _tiny_model(name)
    # Exported from a batch-1 example (the usual case), checked at other batch sizes and odd sizes.
    example = _inputs(name, spec, batch=1, height=37, width=31, seed=2)
    path = export_onnx(model, spec, example, tmp_path / f"{name}.onnx")
    assert path == tmp_path / f"{name}.onnx" and path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "the atomic write left a temporary file"

    predictor = OnnxRuntimePredictor(path, threads=1)
    assert predictor.input_names == spec.input_names
    # OpenVINO at f32 from the same file (recon: FFTs as matrix products; the DFT op's rewrite for
    # OpenVINO is checked in test_fixed_shapes).
    openvino = OpenVinoPredictor(path, threads=1, precision="f32")
    for batch, height, width in [(2, 37, 31), (3, 29, 43)]:
        inputs = _inputs(name, spec, batch=batch, height=height, width=width, seed=3 + height)
        with torch.no_grad():
            expected = model(*[inputs[n] for n in spec.input_names])
        _assert_close(predictor(inputs), expected, f"{name} at {batch}x{height}x{width}")
        _assert_close(openvino(inputs), expected, f"{name} in OpenVINO at {batch}x{height}x{width}")

    first = spec.input_names[0]
    with pytest.raises(ValueError, match=repr(first)):
        predictor({n: t for n, t in example.items() if n != first})
    if name.startswith("modl"):
        # The unrolls and the CG steps are ONNX Loops (one body each, traced once): the file does not
        # grow with the iteration counts, which is what lets the paper's K=10 x 10 CG export in a minute.
        assert _loop_nesting(path) == 2


def _loop_nesting(path: Path) -> int:
    """How deeply ``Loop`` nodes nest in an ONNX file (0: no loop)."""
    import onnx

    def depth(graph: onnx.GraphProto) -> int:
        bodies = [a.g for n in graph.node if n.op_type == "Loop" for a in n.attribute if a.name == "body"]
        return max((depth(body) + 1 for body in bodies), default=0)

    return depth(onnx.load(str(path)).graph)


def test_static_export_fixes_shapes_and_keeps_the_training_mode(tmp_path: Path) -> None:
    import onnx

    model, spec = _tiny_model("rdn_tiny")
    model.train()
    example = _inputs("rdn_tiny", spec, batch=2, height=19, width=23, seed=4)
    path = export_onnx(model, spec, example, tmp_path / "static.onnx", dynamic=False)
    assert model.training, "export must give the model back in the mode it came in"

    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == list(spec.input_names)
    assert [o.name for o in graph.output] == list(spec.output_names)
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [2, 1, 19, 23]

    model.eval()  # the export traced the eval-mode network (BN running statistics)
    with torch.no_grad():
        expected = model(*[example[n] for n in spec.input_names])
    _assert_close(OnnxRuntimePredictor(path)(example), expected, "static rdn_tiny")


def test_dynamic_export_names_its_axes(tmp_path: Path) -> None:
    import onnx

    model, spec = _tiny_model("rdn_tiny")
    path = export_onnx(model, spec, _inputs("rdn_tiny", spec, 1, 11, 13, seed=5), tmp_path / "m.onnx")
    graph = onnx.load(str(path)).graph
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.input}
    assert dims == {"lr": ["batch", 1, "height", "width"], "base": ["batch", 1, "2*height", "2*width"]}


@pytest.mark.parametrize("missing", ["lr", "base"])
def test_export_names_a_missing_input(missing: str, tmp_path: Path) -> None:
    model, spec = _tiny_model("rdn_tiny")
    example = _inputs("rdn_tiny", spec, 1, 11, 13, seed=6)
    del example[missing]
    with pytest.raises(ValueError, match=f"lacks the spec input '{missing}'"):
        export_onnx(model, spec, example, tmp_path / "m.onnx")
    assert not any(tmp_path.iterdir()), "a failed export must not leave a file"


def test_export_rejects_a_wrong_rank_or_an_unknown_input(tmp_path: Path) -> None:
    model, spec = _tiny_model("rdn_tiny")
    example = _inputs("rdn_tiny", spec, 1, 11, 13, seed=7)
    with pytest.raises(ValueError, match=r"'lr' must be a rank-4 NCHW tensor; got \(11, 13\)"):
        export_onnx(model, spec, {**example, "lr": example["lr"][0, 0]}, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="'image'"):
        export_onnx(model, spec, {**example, "image": example["lr"]}, tmp_path / "m.onnx")


def test_an_onnx_session_runs_the_same_pipeline_as_torch(tmp_path: Path) -> None:
    """The pipeline is runtime-agnostic: tiles of any size through an ONNX Runtime session give what
    the torch module gives (pre- and post-processing are not copied into the runtime)."""
    from edgesr.pipeline import TorchPredictor, infer

    model, spec = _tiny_model("rdn_tiny")
    path = export_onnx(model, spec, _inputs("rdn_tiny", spec, 1, 37, 31, 0), tmp_path / "rdn.onnx")
    image = np.random.default_rng(3).uniform(0, 900, (2, 41, 35)).astype(np.float32)
    expected = infer(spec, TorchPredictor(model, spec), image, tile=16)
    result = infer(spec, OnnxRuntimePredictor(path), image, tile=16)
    np.testing.assert_allclose(
        result, expected, rtol=0, atol=RELATIVE_TOLERANCE * float(np.abs(expected).max())
    )
