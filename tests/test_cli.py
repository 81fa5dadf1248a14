from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgesr.cli import main
from tests.conftest import needs_real_data


def test_overview_and_command_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "[key=value ...]" in out
    for command in (
        "data prepare",
        "baseline",
        "train",
        "evaluate",
        "compress",
        "export",
        "bench",
        "report",
        "enhance",
    ):
        assert command in out
    assert main(["baseline", "--help"]) == 0
    out = capsys.readouterr().out
    assert "accelerations" in out and "(4.0, 6.0)" in out


def test_unknown_key_is_a_one_line_error_with_suggestion(capsys):
    assert main(["baseline", "scals=2"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'scals'; did you mean 'scales'?" in err
    assert "Traceback" not in err


def test_bad_value_and_unknown_command(capsys):
    assert main(["baseline", "task=segment"]) == 2
    assert "task='segment' is not valid" in capsys.readouterr().err
    assert main(["baselin"]) == 2
    assert "did you mean 'baseline'" in capsys.readouterr().err
    assert main(["data"]) == 2
    assert "needs a subcommand" in capsys.readouterr().err


def test_export_without_a_model_names_the_three_ways_to_give_one(capsys):
    assert main(["export", "target=cpu-openvino"]) == 2
    assert "give exactly one of model= (shipped: " in capsys.readouterr().err


def test_planned_command_says_which_issue_brings_it(capsys, monkeypatch):
    from edgesr import commands

    planned = commands.Command("serve", "a DICOM node", None, None, "the integration issue")
    monkeypatch.setitem(commands.COMMANDS, "serve", planned)
    assert main(["serve", "port=104"]) == 2
    assert "not available yet: it arrives with the integration issue" in capsys.readouterr().err


def test_missing_data_set_tells_how_to_prepare(tmp_path, capsys):
    assert main(["baseline", f"root={tmp_path}"]) == 2
    assert "edgesr data prepare" in capsys.readouterr().err


def test_console_script_runs_as_a_module():
    result = subprocess.run(
        [sys.executable, "-m", "edgesr", "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and "edgesr" in result.stdout


@pytest.mark.data
@needs_real_data
def test_prepare_info_and_baseline_end_to_end(tmp_path, capsys):
    root = str(tmp_path / "data")
    assert main(["data", "prepare", f"root={root}"]) == 0
    assert main(["data", "info", f"root={root}", "format=json"]) == 0
    info = json.loads(capsys.readouterr().out)
    modalities = {v["modality"] for v in info["volumes"]}
    assert modalities == {"MR", "CT"}
    # Training sources have test slices; external ones are held out whole.
    assert all(v["split_slices"]["test"] > 0 for v in info["volumes"] if v["role"] == "train")
    assert all(
        v["split_slices"]["external"] > 0 and v["split_slices"]["train"] == 0
        for v in info["volumes"]
        if v["role"] == "external"
    )
    assert len(info["fingerprint"]["id"]) == 16
    assert main(["baseline", f"root={root}", "task=sr", "scales=[2]", "max_slices=2", "format=json"]) == 0
    report = json.loads(capsys.readouterr().out)
    methods = {(r["modality"], r["method"]) for r in report["results"]}
    assert methods == {("MR", "bicubic"), ("MR", "zero-fill"), ("CT", "bicubic"), ("CT", "zero-fill")}
    assert all(20 < r["psnr_db"] < 60 and 0.5 < r["ssim"] <= 1 for r in report["results"])
