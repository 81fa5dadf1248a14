"""The compressed students that ship (``edgesr/weights/<teacher>-edge``): their cards match their weights,
they carry the teacher's contract, they run wherever a teacher does, and they keep their card's figures."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from edgesr.cli import main
from edgesr.data.images import load_image
from edgesr.teachers import list_students, list_teachers, teacher_path
from edgesr.train.checkpoint import load_for_inference
from tests.conftest import card_sources


def _card(name: str) -> dict:
    return json.loads((teacher_path(name) / "model_card.json").read_text())


@pytest.mark.parametrize("name", list_students())
def test_student_card_matches_its_weights_and_its_teacher(name):
    card = _card(name)
    folder = teacher_path(name)
    assert (
        card["weights"]["sha256"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    )
    assert card["compression"]["teacher"] in list_teachers()
    # Distilled from the teacher that ships now, not from an earlier version of it.
    teacher_weights = teacher_path(card["compression"]["teacher"]) / "model.safetensors"
    assert (
        card["compression"]["teacher_weights_sha256"]
        == hashlib.sha256(teacher_weights.read_bytes()).hexdigest()
    )
    assert card["compression"]["command"].startswith("edgesr compress recipe=")
    model, spec, meta = load_for_inference(folder)
    assert meta["model"] == card["model"] and card["spec"] == spec.to_dict()
    teacher_spec = _card(card["compression"]["teacher"])["spec"]
    # The student keeps its teacher's contract (task, units, scale, grid); only its halo is its own, or
    # (recon, of a teacher that takes any number of coils) the virtual coils it compresses data to.
    for key in ("task", "outputs", "intensity"):
        assert card["spec"][key] == teacher_spec[key]
    if spec.recon is not None and spec.recon.coils and not teacher_spec["recon"]["coils"]:
        assert [i["name"] for i in card["spec"]["inputs"]] == [i["name"] for i in teacher_spec["inputs"]]
        assert card["spec"]["inputs"][0]["channels"] == 2 * spec.recon.coils
    else:
        assert card["spec"]["inputs"] == teacher_spec["inputs"]
    if spec.sr is not None:
        assert {k: v for k, v in card["spec"]["sr"].items() if k != "receptive_radius"} == {
            k: v for k, v in teacher_spec["sr"].items() if k != "receptive_radius"
        }
    assert sum(p.numel() for p in model.parameters()) == card["parameters"]
    for runtime, entry in card["quantization"].items():
        assert entry["rebuild_command"].startswith(f"edgesr compress recipe={card['compression']['recipe']}")
        assert runtime in ("openvino", "onnxruntime")


@pytest.mark.parametrize("name", [s for s in list_students() if _card(s)["spec"]["task"] == "sr"])
def test_sr_student_enhances_like_a_teacher(tmp_path, name):
    scale = _card(name)["spec"]["sr"]["scale"]
    pixels = (np.random.default_rng(0).random((23, 19)) * 200 + 20).astype(np.float32)
    np.save(tmp_path / "lr.npy", pixels)
    argv = ["enhance", f"model={name}", f"input={tmp_path / 'lr.npy'}", f"output={tmp_path / 'sr.npy'}"]
    if _card(name)["spec"]["intensity"]["modality"] == "CT":
        argv.append("units=raw")
    assert main(argv) == 0
    assert load_image(tmp_path / "sr.npy").data.shape == (1, 23 * scale, 19 * scale)


@pytest.mark.data
@pytest.mark.parametrize("name", list_students())
def test_student_keeps_its_cards_figures_on_real_test_slices(real_data_root, capsys, name):
    """A regression guard: on two real test slices per volume the shipped student, in torch, stays
    above the best baseline its card reports (what a student must at least keep)."""
    card = _card(name)
    argv = ["evaluate", f"model={name}", f"root={real_data_root}", "max_slices=2", "format=json"]
    argv.append(f"sources=[{','.join(card_sources(_card(name)))}]")
    if card["spec"]["task"] == "recon":
        argv.append("accelerations=[4]")
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    [comparison] = report["comparison"]
    assert comparison["gain_db_over_best_baseline"] > 0, comparison
