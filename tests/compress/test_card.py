"""A shipped student's QAT weights: attached from the quantize-only run that trained them, and only to the
student that run quantized."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from edgesr.compress.card import attach_qat_weights
from edgesr.errors import ConfigError


def _stage(tmp_path, float_checkpoint, qat_checkpoint, chosen_remedy: str):
    """A quantize stage folder as `edgesr compress` leaves it: model/, qat/run/best, quantization.json."""
    stage = tmp_path / "1-quantize"
    shutil.copytree(float_checkpoint, stage / "model")
    shutil.copytree(qat_checkpoint, stage / "qat" / "run" / "best")
    attempts = [
        {"remedy": "ptq", "keep_fp": ["node_conv2d"], "calibration_slices": 8, "psnr": 30.0},
        {"remedy": "qat", "keep_fp": ["node_conv2d"], "calibration_slices": 8, "psnr": 30.2},
    ]
    chosen = 1 if chosen_remedy == "qat" else 0
    entry = {"met_gate": False, "chosen": chosen, "attempts": attempts, "qat_checkpoint": "qat/run/best"}
    (stage / "quantization.json").write_text(json.dumps({"runtimes": {"onnxruntime": entry}}))
    return stage


def _card(tmp_path, float_checkpoint):
    card = tmp_path / "student-edge"
    shutil.copytree(float_checkpoint, card)
    sha = hashlib.sha256((card / "model.safetensors").read_bytes()).hexdigest()
    quantization = {"onnxruntime": {"attempt": {"remedy": "qat"}, "rebuild_command": "edgesr compress ..."}}
    (card / "model_card.json").write_text(
        json.dumps({"weights": {"sha256": sha}, "quantization": quantization})
    )
    return card


def test_qat_weights_attach_to_the_student_they_were_trained_from(tiny_checkpoint, tmp_path):
    card = _card(tmp_path, tiny_checkpoint)
    stage = _stage(tmp_path, tiny_checkpoint, tiny_checkpoint, "qat")
    attach_qat_weights(card, stage, command="edgesr compress recipe=r ...")
    written = json.loads((card / "model_card.json").read_text())["quantization"]["onnxruntime"]
    shipped = (card / "qat" / "model.safetensors").read_bytes()
    assert written["qat_weights"]["sha256"] == hashlib.sha256(shipped).hexdigest()
    assert written["qat_weights"]["command"] == "edgesr compress recipe=r ..."
    assert written["attempt"]["psnr"] == 30.2 and written["rebuild_command"] == "edgesr compress ..."
    assert "optimizer" not in json.loads((card / "qat" / "checkpoint.json").read_text())
    assert not card.with_name(card.name + ".tmp").exists()


def test_qat_weights_of_another_student_or_of_a_run_that_chose_ptq_are_refused(tiny_checkpoint, tmp_path):
    card = _card(tmp_path, tiny_checkpoint)
    before = (card / "model_card.json").read_text()
    other = tmp_path / "other"
    shutil.copytree(tiny_checkpoint, other)
    (other / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes() + b" ")
    with pytest.raises(ConfigError, match="not the student"):
        attach_qat_weights(card, _stage(tmp_path / "a", other, tiny_checkpoint, "qat"), command="c")
    with pytest.raises(ConfigError, match="no runtime chose QAT"):
        attach_qat_weights(card, _stage(tmp_path / "b", tiny_checkpoint, tiny_checkpoint, "ptq"), command="c")
    assert (card / "model_card.json").read_text() == before and not (card / "qat").exists()
