"""An artifact's manifest: written last, read back with its spec, and every way a folder can stop
matching it (a changed, missing or escaping file; ONNX external data pointing out) refused by name."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgesr._io import sha256_file
from edgesr.errors import DataError
from edgesr.export.manifest import MANIFEST_FILE, read_manifest, write_manifest
from edgesr.spec import sr_spec

SPEC = sr_spec(modality="MR", scale=2, degradation="mr-kspace", upsampler="zero-fill", receptive_radius=3)


def _tiny_onnx(path, *, external: str | None = None) -> None:
    """y = x + w with a 64-float initializer; with ``external``, w is stored in that file."""
    weights = numpy_helper.from_array(np.arange(64, dtype=np.float32), name="w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])],
        initializer=[weights],
    )
    model = helper.make_model(graph)
    if external is None:
        onnx.save_model(model, str(path))
    else:
        onnx.save_model(model, str(path), save_as_external_data=True, location=external, size_threshold=0)


def _artifact(tmp_path, **onnx_options):
    folder = tmp_path / "artifact"
    folder.mkdir()
    _tiny_onnx(folder / "model.onnx", **onnx_options)
    write_manifest(
        folder, target="cpu-onnxruntime", runtime="onnxruntime", precision="fp32", entry="model.onnx",
        spec=SPEC, source={"model": "rdn_tiny"}, verification={"max_abs_error": 1e-7},
    )  # fmt: skip
    return folder


def _rewrite(folder, **changes) -> None:
    raw = json.loads((folder / MANIFEST_FILE).read_text())
    (folder / MANIFEST_FILE).write_text(json.dumps(raw | changes))


def test_a_manifest_lists_every_file_and_reads_back_with_its_spec(tmp_path):
    folder = _artifact(tmp_path, external="weights.bin")
    manifest = read_manifest(folder)
    assert set(manifest.files) == {"model.onnx", "weights.bin"} and manifest.entry == "model.onnx"
    assert manifest.spec == SPEC and manifest.source["model"] == "rdn_tiny"
    assert manifest.runtime == "onnxruntime" and manifest.created.endswith("+00:00")
    (folder / "README.txt").write_text("notes beside the model are not part of it")
    read_manifest(folder)


def test_a_changed_or_missing_file_is_refused(tmp_path):
    folder = _artifact(tmp_path, external="weights.bin")
    (folder / "weights.bin").write_bytes(b"\0" * 256)
    with pytest.raises(DataError, match=r"weights\.bin has changed since export"):
        read_manifest(folder)
    (folder / "weights.bin").unlink()
    with pytest.raises(DataError, match=r"weights\.bin is missing"):
        read_manifest(folder)


@pytest.mark.parametrize("listed", ["../outside.onnx", "/etc/passwd", "sub/../../outside.onnx", ""])
def test_a_listed_path_that_leaves_the_folder_is_refused(tmp_path, listed):
    folder = _artifact(tmp_path)
    raw = json.loads((folder / MANIFEST_FILE).read_text())
    _rewrite(folder, files=raw["files"] | {listed: "0" * 64})
    with pytest.raises(DataError, match="leaves the artifact folder"):
        read_manifest(folder)


def test_a_listed_symlink_out_of_the_folder_is_refused(tmp_path):
    folder = _artifact(tmp_path)
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", folder / "link.txt")
    raw = json.loads((folder / MANIFEST_FILE).read_text())
    _rewrite(folder, files=raw["files"] | {"link.txt": "0" * 64})
    with pytest.raises(DataError, match="outside the artifact folder"):
        read_manifest(folder)


def test_onnx_external_data_must_stay_inside_and_be_listed(tmp_path):
    folder = _artifact(tmp_path, external="weights.bin")
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../secret.bin"
    onnx.save_model(model, str(folder / "model.onnx"))
    raw = json.loads((folder / MANIFEST_FILE).read_text())
    _rewrite(folder, files=raw["files"] | {"model.onnx": sha256_file(folder / "model.onnx")})
    with pytest.raises(DataError, match=r"tensor 'w' in external data '\.\./secret\.bin'.*leaves"):
        read_manifest(folder)

    # Inside the folder but not listed (so not hashed): refused too.
    (folder / "other.bin").write_bytes((folder / "weights.bin").read_bytes())
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "other.bin"
    onnx.save_model(model, str(folder / "model.onnx"))
    _rewrite(folder, files=raw["files"] | {"model.onnx": sha256_file(folder / "model.onnx")})
    with pytest.raises(DataError, match="other.bin.*not listed"):
        read_manifest(folder)


def test_a_corrupt_onnx_file_with_a_matching_hash_is_refused_as_unreadable(tmp_path):
    folder = tmp_path / "artifact"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"this is not protobuf \xff\xfe")
    write_manifest(folder, target="t", runtime="onnxruntime", precision="fp32", entry="model.onnx", spec=SPEC)
    with pytest.raises(DataError, match="not a readable ONNX file"):
        read_manifest(folder)


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("{not json", "corrupt manifest"),
        ("[]", "JSON object expected"),
        ('{"format": "edgesr-artifact/1"}', "missing target, runtime"),
        ('{"format": "other/9"}', "re-export"),
    ],
)
def test_a_corrupt_manifest_is_refused_by_name(tmp_path, content, named):
    folder = _artifact(tmp_path)
    (folder / MANIFEST_FILE).write_text(content)
    with pytest.raises(DataError, match=named):
        read_manifest(folder)


def test_a_folder_without_a_manifest_is_not_an_artifact(tmp_path):
    with pytest.raises(DataError, match="not an artifact of `edgesr export`"):
        read_manifest(tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        read_manifest(tmp_path / "nowhere")


def test_the_folder_of_an_export_names_the_artifacts_inside_it(tmp_path):
    # `edgesr export out=DIR` writes DIR/<precision>/manifest.json; artifact=DIR names the one to use.
    for precision in ("fp32", "bf16"):
        (tmp_path / precision).mkdir()
        (tmp_path / precision / MANIFEST_FILE).write_text("{}")
    named = r"one artifact per precision \(bf16, fp32\); name one: artifact=.*bf16"
    with pytest.raises(DataError, match=named):
        read_manifest(tmp_path)


def test_writing_refuses_an_unknown_runtime_and_an_entry_that_is_not_there(tmp_path):
    with pytest.raises(ValueError, match="runtime must be one of"):
        write_manifest(tmp_path, target="t", runtime="tflite", precision="fp32", entry="m", spec=SPEC)
    with pytest.raises(ValueError, match="entry 'model.xml' is not a file"):
        write_manifest(
            tmp_path, target="t", runtime="openvino", precision="int8", entry="model.xml", spec=SPEC
        )


def test_a_corrupt_openvino_ir_is_refused_by_name_when_opened(tmp_path):
    from edgesr.export.artifact import open_artifact

    folder = tmp_path / "ir"
    folder.mkdir()
    (folder / "model.xml").write_text("<net name='broken'><layers><layer id='0' type=")
    (folder / "model.bin").write_bytes(b"\0" * 16)
    write_manifest(folder, target="t", runtime="openvino", precision="fp32", entry="model.xml", spec=SPEC)
    with pytest.raises(DataError, match=r"model\.xml: openvino cannot load it"):
        open_artifact(folder)
