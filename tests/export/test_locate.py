"""A failed parity check names the first layer the runtime computes differently (edgesr.export.locate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgesr.export.locate import describe, first_divergent_layer
from edgesr.export.onnx import export_onnx
from edgesr.models import create_model
from tests.conftest import export_cli, spec_for


def _break_conv(source: Path, target: Path, index: int) -> str:
    """A copy of ``source`` whose ``index``-th convolution has one weight changed; that node's name."""
    proto = onnx.load(str(source))
    node = [n for n in proto.graph.node if n.op_type == "Conv"][index]
    weight = next(i for i in proto.graph.initializer if i.name == node.input[1])
    array = numpy_helper.to_array(weight).copy()
    array[0, 0, 0, 0] += 0.5
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    onnx.save(proto, str(target))
    return node.name


@pytest.fixture
def rdn(tmp_path):
    torch.manual_seed(0)
    model = create_model("rdn_tiny", scale=2).eval()
    torch.nn.init.normal_(model.to_image.weight, std=0.05)
    spec = spec_for(model, "rdn_tiny")
    path = export_onnx(model, spec, {"lr": torch.rand(1, 1, 19, 17), "base": torch.rand(1, 1, 38, 34)},
                       tmp_path / "model.onnx")  # fmt: skip
    lr = np.random.default_rng(0).random((1, 1, 21, 18), dtype=np.float32)
    item = {"lr": lr, "base": np.repeat(np.repeat(lr, 2, axis=2), 2, axis=3)}
    return model, spec, path, item


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_the_first_wrong_convolution_is_named_with_the_one_before_it(rdn, runtime, tmp_path):
    model, spec, path, item = rdn
    broken = tmp_path / "broken.onnx"
    node = _break_conv(path, broken, 4)  # rdn_tiny: shallow1, shallow2, block 0's two layers, its fusion
    artifact = broken
    if runtime == "openvino":
        import openvino

        artifact = tmp_path / "broken.xml"
        openvino.save_model(openvino.Core().read_model(str(broken)), str(artifact))
    found = first_divergent_layer(model, spec.input_names, broken, artifact, runtime, item, limit=0.01)
    assert (found["layer"], found["node"]) == ("blocks.0.fusion", node)
    assert found["relative_error"] > 0.1 and found["checked"] == 5
    assert found["last_match"][0] == "blocks.0.layers.1.0" and found["last_match"][1] < 1e-3
    assert "blocks.0.fusion" in describe(found) and "matches" in describe(found)


def test_a_faithful_file_matches_at_every_convolution(rdn):
    model, spec, path, item = rdn
    found = first_divergent_layer(model, spec.input_names, path, path, "onnxruntime", item, limit=1e-4)
    assert found == {"checked": 12, "layer": None}
    assert "All 12 convolutions" in describe(found)


def test_convolutions_inside_loop_bodies_are_said_to_be_out_of_reach(tmp_path):
    model = create_model("modl_tiny").eval()
    spec = spec_for(model, "modl_tiny")
    example = {"masked_kspace": torch.rand(1, 8, 24, 20), "mask": torch.ones(1, 1, 1, 20),
               "sens_maps": torch.rand(1, 8, 24, 20)}  # fmt: skip
    path = export_onnx(model, spec, example, tmp_path / "modl.onnx")
    item = {name: tensor.numpy() for name, tensor in example.items()}
    found = first_divergent_layer(model, spec.input_names, path, path, "onnxruntime", item, limit=1e-4)
    assert found["checked"] == 0 and "Loop bodies" in describe(found)


def test_a_failed_export_names_the_layer(tiny_dataset, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """Through ``edgesr export``: the float graph gets one wrong weight (as a runtime computing one layer
    wrongly would), and the parity failure names that layer."""
    import edgesr.export.onnx as onnx_module

    real = onnx_module.export_onnx

    def exported_with_a_wrong_weight(*args, **kwargs):
        path = real(*args, **kwargs)
        _break_conv(path, path, 4)
        return path

    monkeypatch.setattr(onnx_module, "export_onnx", exported_with_a_wrong_weight)
    out = tmp_path / "exported"
    argv = ("target=cpu-onnxruntime", "precisions=[fp32]", "verify.slices=1")
    assert export_cli(tiny_dataset, tiny_checkpoint, out, *argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "differs from PyTorch" in err
    assert "The first layer that differs is blocks.0.fusion" in err and "blocks.0.layers.1.0, matches" in err
