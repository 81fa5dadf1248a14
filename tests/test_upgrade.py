"""`edgesr upgrade`: a checkpoint from before the model contract gets its spec once, from its record."""

from __future__ import annotations

import json
import shutil

import numpy as np

from edgesr.cli import main
from edgesr.teachers import teacher_path


def _strip_spec(folder) -> None:
    for name in ("checkpoint.json", "model_card.json"):
        record = json.loads((folder / name).read_text())
        record.pop("spec")
        (folder / name).write_text(json.dumps(record))


def test_a_legacy_checkpoint_is_refused_then_upgraded_once(tmp_path, capsys):
    legacy = tmp_path / "rdn-ct-x2"
    shutil.copytree(teacher_path("rdn-ct-x2"), legacy)
    _strip_spec(legacy)
    np.save(tmp_path / "lr.npy", np.full((9, 11), 50.0, dtype=np.float32))
    enhance = [
        "enhance",
        f"checkpoint={legacy}",
        f"input={tmp_path / 'lr.npy'}",
        f"output={tmp_path / 'sr.npy'}",
    ]
    # No spec: an error that says what to do, never today's defaults filled in at load time.
    assert main([*enhance, "units=raw"]) == 2
    assert "edgesr upgrade" in capsys.readouterr().err
    assert main(["upgrade", f"checkpoint={legacy}"]) == 0
    shipped = json.loads((teacher_path("rdn-ct-x2") / "checkpoint.json").read_text())["spec"]
    upgraded = json.loads((legacy / "checkpoint.json").read_text())
    # The record's empty data.degradation meant the CT default of the run's time: ct-blur, bicubic skip.
    assert upgraded["spec"] == shipped and upgraded["spec"]["sr"]["degradation"] == "ct-blur"
    assert json.loads((legacy / "model_card.json").read_text())["spec"] == shipped
    before = (legacy / "checkpoint.json").read_bytes()
    assert main(["upgrade", f"checkpoint={legacy}"]) == 0  # a second run changes nothing
    assert (legacy / "checkpoint.json").read_bytes() == before
    assert main([*enhance, "units=raw"]) == 0


def test_a_corrupt_card_leaves_the_checkpoint_untouched(tmp_path, capsys):
    legacy = tmp_path / "rdn-mr-x2"
    shutil.copytree(teacher_path("rdn-mr-x2"), legacy)
    _strip_spec(legacy)
    (legacy / "model_card.json").write_text("{ not json")
    before = (legacy / "checkpoint.json").read_bytes()
    assert main(["upgrade", f"checkpoint={legacy}"]) == 2
    assert "model_card.json" in capsys.readouterr().err
    assert (legacy / "checkpoint.json").read_bytes() == before


def test_a_spec_with_an_unknown_degradation_is_a_clear_error(tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(teacher_path("rdn-mr-x2"), broken)
    record = json.loads((broken / "checkpoint.json").read_text())
    record["spec"]["sr"]["degradation"] = "mr-kspaec"
    (broken / "checkpoint.json").write_text(json.dumps(record))
    np.save(tmp_path / "lr.npy", np.ones((9, 11), dtype=np.float32))
    argv = ["enhance", f"checkpoint={broken}", f"input={tmp_path / 'lr.npy'}", f"output={tmp_path / 'o.npy'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "spec.sr.degradation" in err and "checkpoint.json" in err
