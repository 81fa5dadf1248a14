"""`edgesr compress`: recipes validated, a distillation stage through the one training loop, resume
from a finished stage, and a report that puts the teacher and every stage side by side."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shlex
from typing import Any

import pytest
import torch

from edgesr.cli import main
from edgesr.compress import runner
from edgesr.compress.recipe import RECIPES_DIR, load_recipe
from edgesr.errors import ConfigError
from edgesr.models import create_model
from edgesr.teachers import list_teachers
from edgesr.train.checkpoint import load_for_inference
from tests.conftest import save_model


@pytest.fixture
def tiny_teacher(tmp_path):
    torch.manual_seed(0)
    model = create_model("rdn_tiny", scale=2)
    torch.nn.init.normal_(model.to_image.weight, std=0.02)  # a teacher that is not the plain skip
    return save_model(tmp_path / "teacher", model, "rdn_tiny", {"scale": 2, "upsampler": "zero-fill"})


def _recipe(tmp_path, teacher, root, steps: int = 4, student: str = "student: rdn_tiny") -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(
        f"teacher: {teacher}\ndata_root: {root}\neval_split: val\neval_slices: 1\nlatency_size: 32\n"
        "latency_repeats: 2\nthreads: 1\nreport_runtimes: [torch]\nmax_psnr_drop_db: 100\nmax_ssim_drop: 1\n"
        "stages:\n"
        f"  - kind: distill\n    {student}\n    steps: {steps}\n    batch_size: 2\n    patch: 8\n"
        "    eval_every: 2\n    warmup: 1\n"
    )
    return str(path)


def test_a_distillation_recipe_runs_resumes_and_reports(
    tiny_dataset, tiny_teacher, tmp_path, capsys, monkeypatch
):
    # As on a CPU with BF16 units (this one's are): the student is also run under torch's BF16 autocast.
    monkeypatch.setattr("edgesr.compress.report.cpu_has_native_bf16", lambda: True)
    recipe = _recipe(tmp_path, tiny_teacher, tiny_dataset.path.parent)
    out = tmp_path / "out"
    assert main(["compress", f"recipe={recipe}", f"out={out}"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "sr" and report["teacher"]["model"] == "rdn_tiny"
    [stage] = report["stages"]
    assert stage["name"] == "1-distill" and {"psnr", "ssim", "params"} <= stage.keys()
    assert [(r["model"], r["precision"]) for r in report["runs"]] == [
        ("teacher", "fp32"), ("student", "fp32"), ("student", "bf16")
    ]  # fmt: skip
    for run in report["runs"]:
        assert {"p50", "p90", "p99", "mean"} <= run["latency_ms"].keys()
        assert run["runtime"] == "torch"
        assert run["executed_precision"] == ("fp32" if run["precision"] == "fp32" else "bf16+fp32")
        assert len(run["cpu_affinity"]) == run["threads"]  # timed pinned to `threads` cores
        assert run["malloc"] == "steady"  # freed memory kept in the heap: the steady state is timed
        assert run["gradient_energy_ratio"] > 0 and "sharpness" in (out / "report.md").read_text()
        assert run["size_mb"] > 0  # the checkpoint's safetensors
    assert report["dataset"]["name"] == f"edgesr-data-{tiny_dataset.fingerprint['id']}"
    assert report["runs"][0]["sharpness_vs_teacher"] == 1.0  # the teacher against itself
    # Scored in BF16 (not a copy of the FP32 figures), and a candidate for the fastest torch run.
    student_fp32, student_bf16 = report["runs"][1:]
    assert student_bf16["psnr"] != student_fp32["psnr"]
    assert report["fastest_at_equal_quality"]["torch"]["run"] in {student_fp32["name"], student_bf16["name"]}
    # Figures per source volume too (a template would be listed apart and never be the headline).
    assert report["dataset"]["templates"] == []
    for row in [report["teacher"], stage, *report["runs"], *report["baselines"]]:
        assert set(row["by_source"]) == {"fake-mr"} and row["by_source"]["fake-mr"]["slices"] >= 1
    assert "## Per source" in (out / "report.md").read_text()
    # No template among the sources: no "real scans" column (it would repeat "vs teacher").
    assert "scans" not in capsys.readouterr().out
    assert {b["name"] for b in report["baselines"]} == {"bicubic", "zero-fill"}
    assert report["gate"]["passed"] and "Gate passed" in (out / "report.md").read_text()
    # How torch ran is recorded and said: its timings of different layouts do not compare.
    assert report["machine"]["torch_cpu_memory_format"] == "channels_last"
    assert "torch in channels_last." in (out / "report.md").read_text()
    assert "no external MR source" in report["external"]["skipped"]
    assert (out / "recipe.resolved.yaml").is_file()
    # The page a person opens, with its plots embedded.
    assert (out / "report.html").read_text().count('src="data:image/png;base64,') == 3
    assert (out / "images_out.png").is_file()  # input, teacher, student, reference and error maps
    assert "![latency_psnr.png](latency_psnr.png)" in (out / "report.md").read_text()  # the same plots
    # The stage's model carries the teacher's contract with its own receptive radius.
    model, spec, meta = load_for_inference(out / "1-distill" / "model")
    assert spec.sr is not None and spec.sr.scale == 2 and meta["model"] == "rdn_tiny"
    # A second run without resume refuses to redo a finished stage, and leaves the run's record as it was.
    resolved = (out / "recipe.resolved.yaml").read_text()
    assert main(["compress", f"recipe={recipe}", f"out={out}", "stages.0.lr=0.01"]) == 2
    assert "resume=true" in capsys.readouterr().err
    assert (out / "recipe.resolved.yaml").read_text() == resolved
    # With resume it skips it, also when only its length changed (a stopped run reported as finished).
    before = (out / "1-distill" / "model" / "model.safetensors").read_bytes()
    assert main(["compress", f"recipe={recipe}", f"out={out}", "resume=true", "stages.0.steps=3"]) == 0
    assert "finished earlier" in capsys.readouterr().err
    assert (out / "1-distill" / "model" / "model.safetensors").read_bytes() == before
    # Other options, or another teacher, make the finished stage a different stage: refused, not reused.
    assert main(["compress", f"recipe={recipe}", f"out={out}", "resume=true", "stages.0.lr=0.01"]) == 2
    assert "stages.0: " in (said := capsys.readouterr().err) and "made with other options" in said


def test_the_report_shows_whether_the_student_keeps_the_teachers_external_figures(
    tiny_dataset_with_external, tiny_teacher, tmp_path, monkeypatch
):
    # As on a CPU with BF16 units: the torch BF16 run the report may recommend is scored here too.
    monkeypatch.setattr("edgesr.compress.report.cpu_has_native_bf16", lambda: True)
    recipe = _recipe(tmp_path, tiny_teacher, tiny_dataset_with_external.path.parent)
    out, card = tmp_path / "out", tmp_path / "tiny-edge"
    assert main(["compress", f"recipe={recipe}", f"out={out}", f"card={card}"]) == 0
    report = json.loads((out / "report.json").read_text())
    written = json.loads((card / "model_card.json").read_text())
    assert written["external"] == report["external"]
    # Trained on the recipe's own split: the external source is in `data`, not in `trained_on`.
    assert [s["name"] for s in written["trained_on"]["sources"]] == ["fake-mr"]
    assert {d["name"] for d in written["data"]} == {"fake-mr", "elsewhere-mr"}
    # The card names the teacher's weights it was made from, not only the teacher's name.
    teacher_sha = hashlib.sha256((tiny_teacher / "model.safetensors").read_bytes()).hexdigest()
    assert (
        written["compression"]["teacher_weights_sha256"] == report["teacher"]["weights_sha256"] == teacher_sha
    )
    assert report["dataset"]["sources"] == ["fake-mr"]  # the recipe's own split: no external source
    external = report["external"]
    assert external["sources"] == ["elsewhere-mr"] and external["images"] == 1  # eval_slices: 1
    teacher, student, student_bf16 = external["models"]
    assert teacher["name"].endswith("/torch/fp32") and teacher["psnr_vs_teacher_db"] == 0
    assert student["name"] == "1-distill/torch/fp32" and set(student["by_source"]) == {"elsewhere-mr"}
    assert student_bf16["name"] == "1-distill/torch/bf16" and student_bf16["psnr"] != student["psnr"]
    assert student["psnr_vs_teacher_db"] == pytest.approx(student["psnr"] - teacher["psnr"], abs=1e-3)
    assert {b["name"] for b in external["baselines"]} == {"bicubic", "zero-fill"}
    assert (
        external["within_gate"] is True and external["outside_gate"] == []
    )  # the tiny recipe's gate: 100 dB
    text = (out / "report.md").read_text()
    assert "## External split (sources never trained on)" in text and "| 1-distill/torch/fp32 |" in text


def test_a_finished_run_is_rescored_without_redoing_it_when_an_external_source_is_added(
    tiny_dataset, tiny_teacher, tmp_path, monkeypatch, capsys
):
    """Stages read the train and val splits only: a data set that gained an external source (what a
    newer edgesr or package brings) re-scores a finished run on resume, and its report gains the
    external split, without redoing the stages. Other training slices redo them."""
    from tests.conftest import _prepare_tiny

    recipe = _recipe(tmp_path, tiny_teacher, tiny_dataset.path.parent)
    out = tmp_path / "out"
    assert main(["compress", f"recipe={recipe}", f"out={out}"]) == 0
    assert "skipped" in json.loads((out / "report.json").read_text())["external"]
    before = (out / "1-distill" / "model" / "model.safetensors").read_bytes()
    grown = _prepare_tiny(tmp_path, monkeypatch, external=True)
    assert grown.fingerprint["id"] != tiny_dataset.fingerprint["id"]
    capsys.readouterr()
    assert main(["compress", f"recipe={recipe}", f"out={out}", "resume=true"]) == 0
    assert "finished earlier" in capsys.readouterr().err
    assert (out / "1-distill" / "model" / "model.safetensors").read_bytes() == before
    report = json.loads((out / "report.json").read_text())
    assert report["external"]["sources"] == ["elsewhere-mr"]
    # The training volume itself changed: the finished stage was made from other data, refused.
    manifest_path = grown.path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["volumes"][0]["splits"]["train"] = manifest["volumes"][0]["splits"]["train"][1:]
    manifest_path.write_text(json.dumps(manifest))
    assert main(["compress", f"recipe={recipe}", f"out={out}", "resume=true"]) == 2
    assert "made with other options" in capsys.readouterr().err


def test_students_are_distilled_on_the_batches_their_teacher_was_trained_on(tiny_dataset, tmp_path):
    """A teacher trained with scanner variety passes it on: the student learns what the teacher does on
    noisy, 8-bit, masked scans, not only on the clean training slices. Older teachers keep the batches
    every recipe drew until then."""
    from edgesr.compress.distill import teacher_training_data
    from edgesr.train.data import ScannerVariety

    torch.manual_seed(0)
    model = create_model("rdn_tiny", scale=2)
    data = {"modality": "MR", "patch": 8, "noise_max": 0.003, "scan_noise": 0.04, "zoom": [0.9, 1.0],
            "quantize_8bit": 0.2, "background_zero": 0.5}  # fmt: skip
    varied = save_model(tmp_path / "varied", model, "rdn_tiny", {"scale": 2}, config={"data": data})
    plain = save_model(tmp_path / "plain", model, "rdn_tiny", {"scale": 2})
    assert teacher_training_data(plain) == (0.01, ScannerVariety())
    expected = ScannerVariety(scan_noise=0.04, zoom=(0.9, 1.0), quantize_8bit=0.2, background_zero=0.5)
    assert teacher_training_data(varied) == (0.003, expected)
    recipe = _recipe(tmp_path, varied, tiny_dataset.path.parent, steps=2)
    out = tmp_path / "out"
    assert main(["compress", f"recipe={recipe}", f"out={out}"]) == 0
    _, _, meta = load_for_inference(out / "1-distill" / "run" / "last")
    recorded = meta["config"]["data"]
    assert recorded["noise_max"] == 0.003 and recorded["scan_noise"] == 0.04
    assert recorded["background_zero"] == 0.5 and tuple(recorded["zoom"]) == (0.9, 1.0)


def test_external_models_outside_the_gate_are_named_by_psnr_or_ssim():
    from edgesr.compress.report import _external_lines

    def row(name, psnr, ssim):
        return {"name": name, "psnr": psnr, "ssim": ssim, "by_source": {"a": {"psnr_db": psnr}}}

    external = {
        "images": 2, "sources": ["a"], "max_slices_per_volume": 6, "within_gate": False,
        "outside_gate": ["s/openvino/int8"], "baselines": [],
        "models": [row("t/torch/fp32", 30.0, 0.9), row("s/openvino/int8", 29.99, 0.896)],
    }  # fmt: skip
    report = {"gate": {"max_psnr_drop_db": 0.15, "max_ssim_drop": 0.003}, "external": external}
    text = "\n".join(_external_lines(report))
    assert "**Outside** are `s/openvino/int8`: beyond the recipe's gate" in text
    assert "| s/openvino/int8 | 29.99 / 0.8960 (-0.01) | 29.99 (-0.01) |" in text
    # A file that could not take the external images is not "within" by default.
    unscored = external | {"outside_gate": [], "not_scored": ["s/onnxruntime/int8"]}
    failed = {"name": "s/onnxruntime/int8", "error": "fixed shape"}
    unscored["models"] = [row("t/torch/fp32", 30.0, 0.9), failed]
    text = "\n".join(_external_lines({**report, "external": unscored}))
    assert "Not every shipped model could be scored" in text and "not scored: fixed shape" in text


def test_the_gate_scores_real_scans_and_keeps_every_slices_figures_beside_them():
    """A student that imitates the teacher on real scans but not its gain on a template passes on
    real scans (the default) and misses with gate_on: all; both figures are in the gate either way."""
    from edgesr.compress.recipe import Recipe
    from edgesr.compress.report import _gate, gate_scope

    def row(name, scan, template):  # 8 slices of a real scan, 4 of a template
        by_source = {"scan": {"slices": 8, "psnr_db": scan[0], "ssim": scan[1]},
                     "atlas": {"slices": 4, "psnr_db": template[0], "ssim": template[1]}}  # fmt: skip
        overall = {"psnr": (8 * scan[0] + 4 * template[0]) / 12, "ssim": (8 * scan[1] + 4 * template[1]) / 12}
        return {"name": name, "scored_in": "torch fp32", "by_source": by_source, **overall}

    teacher, student = row("teacher", (38.0, 0.980), (35.0, 0.960)), row("s", (37.9, 0.979), (34.4, 0.950))
    gate = _gate(Recipe(), teacher, student, ["atlas"])
    assert gate["scored_on"] == "real_scans" and gate["sources"] == ["scan"] and gate["slices"] == 8
    assert gate["psnr_drop_db"] == pytest.approx(0.1) and gate["ssim_drop"] == pytest.approx(0.001)
    assert gate["all_slices"]["psnr_drop_db"] == pytest.approx(0.267, abs=1e-3) and gate["passed"]
    assert "on the 8 slices of real scans (scan); on every slice, templates included: 0.267 dB" in (
        gate_scope(gate)
    )
    every = _gate(Recipe(gate_on="all"), teacher, student, ["atlas"])
    assert every["scored_on"] == "all" and not every["passed"] and "all_slices" not in every
    assert every["psnr_drop_db"] == pytest.approx(0.267, abs=1e-3) and gate_scope(every) == ""
    # No template among the sources: every slice is a real scan, scored once.
    plain = _gate(Recipe(), teacher, student, [])
    assert plain["scored_on"] == "all" and plain["psnr_drop_db"] == every["psnr_drop_db"]
    with pytest.raises(ConfigError, match="gate_on"):
        Recipe(gate_on="templates")


def test_recipe_overrides_reach_list_items_and_bad_keys_name_themselves(tiny_teacher, tmp_path, tiny_dataset):
    recipe = _recipe(tmp_path, tiny_teacher, tiny_dataset.path.parent)
    assert load_recipe(recipe, ["stages.0.steps=9"]).stages[0].steps == 9
    with pytest.raises(ConfigError, match="stages.0.stepz"):
        load_recipe(recipe, ["stages.0.stepz=9"])
    with pytest.raises(ConfigError, match="no item 2"):
        load_recipe(recipe, ["stages.2.steps=9"])
    with pytest.raises(ConfigError, match="stages.0.kind"):  # the item named by its index
        load_recipe(recipe, ["stages.0.kind=sparsify"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: rdn-mr-x2\nstages:\n  - kind: distill\n    stepz: 3\n")
    with pytest.raises(ConfigError, match="stepz"):
        load_recipe(str(bad))
    with pytest.raises(ConfigError, match="no recipe"):
        load_recipe("no-such-recipe")


def test_a_student_option_of_the_wrong_type_or_value_is_refused_before_out_is_written(
    tiny_teacher, tmp_path, tiny_dataset, capsys
):
    recipe = _recipe(tmp_path, tiny_teacher, tiny_dataset.path.parent)
    out = tmp_path / "o"
    for option, needle in (("in_channels=abc", "must be of type int"), ("in_channels=0", "at least 1")):
        argv = ["compress", f"recipe={recipe}", f"out={out}", f"stages.0.student_options.{option}"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "stages.0.student_options" in err and needle in err, err
        assert not out.exists()


def test_recipe_files_that_say_nothing_useful_are_named(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="is empty"):  # not a default run of hours
        load_recipe(str(empty))
    with pytest.raises(ConfigError, match="is a folder"):
        load_recipe(str(tmp_path))
    # A bad value typed on the command line is blamed on the command line, by its whole key.
    with pytest.raises(ConfigError, match=re.escape("'stages.0.steps' (set on the command line)")):
        load_recipe("modl_r4_edge", ["stages.0.steps=abc"])
    with pytest.raises(ConfigError, match=re.escape("did you mean 'stages.0.steps'")):
        load_recipe("modl_r4_edge", ["stages.0.stepz=3"])


def test_one_student_option_is_set_by_its_dotted_key_and_a_colon_without_space_is_named():
    recipe = load_recipe("modl_r4_edge", ["stages.0.student_options.iterations=6"])
    assert recipe.stages[0].student_options == {"iterations": 6, "cg_iterations": 4}
    whole = load_recipe("modl_r4_edge", ["stages.0.student_options={iterations: 5, cg_iterations: 3}"])
    assert whole.stages[0].student_options == {"iterations": 5, "cg_iterations": 3}
    # {iterations:6} (no space) is one key "iterations:6" without a value to YAML: named, not passed on.
    with pytest.raises(ConfigError, match=re.escape("'iterations:6' reads as a key without a value")):
        load_recipe("modl_r4_edge", ["stages.0.student_options={iterations:6}"])


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["stages.1.keep_fp_patterns=['(']"], "keep_fp_patterns: '(' is not a regular expression"),
        (["stages.0.output_weight=0", "stages.0.target_weight=0"], "cannot both be 0"),
        (["stages.0.patch=0"], "stages.0.patch=0"),
        (["stages.0.crop=4"], "stages.0.crop=4"),
        (["stages.0.warmup=-1"], "stages.0.warmup=-1"),
        (["stages.0.disc_lr=-0.1"], "stages.0.disc_lr"),
        (["max_ssim_drop=-0.01"], "max_ssim_drop"),
    ],
)
def test_bad_values_are_recipe_errors_when_it_loads_not_hours_into_a_run(overrides, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_recipe("quickstart", overrides)


def test_an_out_that_is_a_file_is_refused_and_left_alone(tiny_teacher, tmp_path, tiny_dataset, capsys):
    recipe = _recipe(tmp_path, tiny_teacher, tiny_dataset.path.parent)
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    assert main(["compress", f"recipe={recipe}", f"out={target}"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err and target.read_text() == "keep me"
    assert main(["compress", f"recipe={recipe}", f"out={tmp_path / 'o'}", f"card={target}"]) == 2
    assert "card=" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_a_student_of_another_task_is_refused(tiny_teacher, tmp_path, tiny_dataset, capsys):
    recipe = _recipe(tmp_path, tiny_teacher, tiny_dataset.path.parent)
    argv = ["compress", f"recipe={recipe}", f"out={tmp_path / 'o'}", "stages.0.student=modl_tiny"]
    assert main(argv) == 2
    assert "recon model" in capsys.readouterr().err


def test_a_prune_that_would_remove_nothing_is_a_recipe_error(tiny_teacher, tmp_path, tiny_dataset, capsys):
    recipe = tmp_path / "p.yaml"
    recipe.write_text(
        f"teacher: {tiny_teacher}\ndata_root: {tiny_dataset.path.parent}\nreport_runtimes: [torch]\n"
        "stages:\n  - kind: prune\n    ratio: 0.1\n    round_to: 64\n    steps: 0\n"
    )
    assert main(["compress", f"recipe={recipe}", f"out={tmp_path / 'o'}"]) == 2
    assert "stages.0: ratio=0.1 with round_to=64 removes no channel" in capsys.readouterr().err
    assert not (tmp_path / "o" / "1-prune" / "model").exists()


def test_a_patch_too_large_for_the_training_slices_is_found_before_any_stage_runs(
    tiny_teacher, tmp_path, tiny_dataset, capsys
):
    # 37x33 slices at x2 give 16 low-resolution pixels on the short side (either way up: rot90).
    recipe = _recipe(tmp_path, tiny_teacher, tiny_dataset.path.parent)
    out = tmp_path / "big"
    later = "{kind: distill, student: rdn_tiny, steps: 2, batch_size: 2, patch: 17, eval_every: 2}"
    argv = ["compress", f"recipe={recipe}", f"out={out}", f"stages=[{later.replace('17', '16')}, {later}]"]
    assert main(argv) == 2
    said = capsys.readouterr().err
    assert "stages.1.patch=17" in said and "(37x33, 18x16 at x2); at most 16" in said
    assert not out.exists()  # found before stage 1 trained or anything was written
    # The teacher's training command says the same, naming its own key.
    train = ["train", "model=rdn_tiny", "data.scale=2", "data.patch=17", "optim.steps=1"]
    assert main([*train, f"data.root={tiny_dataset.path.parent}", f"out={tmp_path / 't'}"]) == 2
    assert "data.patch=17: a crop of 17 low-resolution pixels" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
    # A recon crop is stacked across the batch, so it too must fit every slice: 33 pixels at most here.
    recon = ["train", "model=modl_tiny", "data.crop=34", "data.batch_size=2", "optim.steps=1"]
    assert main([*recon, f"data.root={tiny_dataset.path.parent}", f"out={tmp_path / 'r'}"]) == 2
    assert (
        "data.crop=34: a crop of 34 pixels does not fit the smallest MR train slice (37x33); at most 33"
        in (capsys.readouterr().err)
    )


def test_a_distill_stage_without_a_student_trains_a_copy_of_the_previous_model(
    tiny_teacher, tmp_path, tiny_dataset
):
    recipe = _recipe(tmp_path, tiny_teacher, tiny_dataset.path.parent)
    out = tmp_path / "again"
    short = "steps: 2, batch_size: 2, patch: 8, eval_every: 2, warmup: 1"
    stages = f"stages=[{{kind: distill, student: rdn_tiny, {short}}}, {{kind: distill, {short}, lr: 0.05}}]"
    assert main(["compress", f"recipe={recipe}", f"out={out}", stages]) == 0
    report = json.loads((out / "report.json").read_text())
    first, _ = report["stages"]
    # The first stage's row is scored on its own weights, not on what the second stage trained them into.
    model, spec, _ = load_for_inference(out / "1-distill" / "model")
    from edgesr.compress.report import score_predictor
    from edgesr.pipeline import TorchPredictor

    own = score_predictor(spec, TorchPredictor(model, spec, "cpu"), tiny_dataset, split="val", max_slices=1)
    assert own["psnr"] == first["psnr"]


def test_a_gan_student_can_be_kept_by_its_agreement_with_the_teacher(
    tiny_teacher, tmp_path, tiny_dataset, capsys
):
    recipe = _recipe(tmp_path, tiny_teacher, tiny_dataset.path.parent)
    out = tmp_path / "agree"
    assert main(["compress", f"recipe={recipe}", f"out={out}", "stages.0.select_by=teacher"]) == 0
    records = [
        json.loads(line) for line in (out / "1-distill" / "run" / "log.jsonl").read_text().splitlines()
    ]
    validations = [r for r in records if "val_psnr_to_teacher" in r]
    assert len(validations) == 2 and all("best_val_psnr_to_teacher" in r for r in validations)
    best = max(validations, key=lambda r: r["val_psnr_to_teacher"])
    _, _, meta = load_for_inference(out / "1-distill" / "model")
    assert meta["step"] == best["step"]
    assert "val_psnr_to_teacher" in capsys.readouterr().err
    # A recon student has no SR agreement score: a recipe error before anything runs.
    recon = create_model("modl_tiny", iterations=2)
    teacher = save_model(tmp_path / "recon", recon, "modl_tiny", {"iterations": 2})
    argv = ["compress", f"recipe={recipe}", f"out={tmp_path / 'r'}", f"teacher={teacher}",
            "stages.0.student=modl_tiny", "stages.0.select_by=teacher"]  # fmt: skip
    assert main(argv) == 2
    assert "stages.0.select_by=teacher: SR stages only" in capsys.readouterr().err


def test_a_student_can_start_from_the_teachers_weights(tiny_teacher, tmp_path, tiny_dataset, capsys):
    recipe = _recipe(tmp_path, tiny_teacher, tiny_dataset.path.parent, steps=2)
    out = tmp_path / "warm"
    assert main(["compress", f"recipe={recipe}", f"out={out}", "stages.0.student_init=teacher"]) == 0
    said = capsys.readouterr().err
    shared = len(create_model("rdn_tiny", scale=2).state_dict())
    assert f"student starts from rdn_tiny's weights: {shared} of {shared} tensors" in said
    # A student sharing no tensor with the teacher is a recipe error, not a silent cold start.
    teacher = runner.Candidate("teacher", torch.nn.Linear(3, 4), "x", {}, None, tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="shares no tensor"):
        runner._init_from(create_model("rdn_tiny", scale=2), teacher)
    assert main(["compress", f"recipe={recipe}", "stages.0.student_init=pretrained"]) == 2
    assert "stages.0.student_init" in capsys.readouterr().err


def test_an_existing_student_is_re_distilled_from_a_checkpoint(tiny_teacher, tmp_path, tiny_dataset, capsys):
    """As rdn_mr_x2_edge_refresh: a pruned student, shape and weights, trained towards a new teacher."""
    from edgesr.compress.prune import prune

    teacher, _, _ = load_for_inference(tiny_teacher)
    example = (torch.rand(1, 1, 12, 12), torch.rand(1, 1, 24, 24))
    pruned = prune(teacher, example, ratio=0.5, round_to=2)  # a shape no preset has
    options = {"scale": 2, "upsampler": "zero-fill"}
    student = save_model(tmp_path / "student", pruned, "rdn_tiny", options)
    recipe = _recipe(
        tmp_path, tiny_teacher, tiny_dataset.path.parent, steps=2, student=f"student_init: {student}"
    )
    out = tmp_path / "again"
    assert main(["compress", f"recipe={recipe}", f"out={out}"]) == 0
    assert f"student starts as {student} (rdn_tiny" in " ".join(capsys.readouterr().err.split())
    model, _, _ = load_for_inference(out / "1-distill" / "model")
    assert [p.shape for p in model.parameters()] == [p.shape for p in pruned.parameters()]
    # The report (and so the card) says which weights the student started from.
    [stage] = json.loads((out / "report.json").read_text())["stages"]
    sha = hashlib.sha256((student / "model.safetensors").read_bytes()).hexdigest()
    assert stage["started_from"] == {"student_init": str(student), "weights_sha256": sha}
    assert f"1-distill started from `{student}` (weights sha256 {sha[:16]}" in (out / "report.md").read_text()
    # Its weights are part of what the stage was made from: other weights refuse the finished stage.
    torch.nn.init.normal_(pruned.to_image.weight)
    save_model(tmp_path / "student", pruned, "rdn_tiny", options)
    assert main(["compress", f"recipe={recipe}", f"out={out}", "resume=true"]) == 2
    assert "made with other options or from another model" in capsys.readouterr().err
    # Refused before anything is written: a student for another contract, a name that is nothing.
    x4 = save_model(tmp_path / "x4", create_model("rdn_tiny", scale=4), "rdn_tiny", {"scale": 4})
    for init, said in [(x4, "'scale': 4"), ("no-such-student", "'no-such-student': not scratch, teacher")]:
        fresh = tmp_path / "refused"
        assert main(["compress", f"recipe={recipe}", f"out={fresh}", f"stages.0.student_init={init}"]) == 2
        err = capsys.readouterr().err
        assert "stages.0.student_init=" in err and said in err and not fresh.exists(), err
    # The checkpoint gives the student's model: a preset named beside it is a recipe error.
    assert main(["compress", f"recipe={recipe}", "stages.0.student=rdn_tiny"]) == 2
    assert "stages.0.student='rdn_tiny' must be left out" in capsys.readouterr().err


def test_a_distill_stage_of_no_steps_rebuilds_the_teachers_weights_with_the_stages_options(
    tiny_teacher, tmp_path, tiny_dataset, capsys
):
    """As modl_r4_edge's first stage: the teacher's own weights at fewer CG steps, no training."""
    recipe = _recipe(tmp_path, tiny_teacher, tiny_dataset.path.parent, steps=2)
    out = tmp_path / "same"
    argv = ["compress", f"recipe={recipe}", f"out={out}", "stages.0.steps=0", "stages.0.student_init=teacher"]
    assert main(argv) == 0
    stage = next(p for p in out.iterdir() if (p / "model").is_dir())
    student, _, _ = load_for_inference(stage / "model")
    teacher, _, _ = load_for_inference(tiny_teacher)
    for (name, a), (_, b) in zip(student.state_dict().items(), teacher.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert not (stage / "run").exists()  # nothing trained
    # Without the teacher's weights, a distill stage of no steps would ship an untrained student.
    with pytest.raises(ConfigError, match=re.escape("stages.0.steps=0")):
        load_recipe(recipe, ["stages.0.steps=0"])


def test_a_qat_attempt_is_rebuilt_by_training_again_with_the_stages_options_and_seed():
    from edgesr.compress.card import _rebuild_command
    from edgesr.compress.recipe import Stage

    stage = dataclasses.asdict(Stage(kind="quantize", qat_steps=120, batch_size=4))
    attempt = {"remedy": "qat", "keep_fp": ["node_conv2d"], "calibration_slices": 64, "bias_correction": True}
    gate = {"max_psnr_drop_db": 0.15, "max_ssim_drop": 0.003, "slices_per_volume": 4}
    command = _rebuild_command("r", "student", "onnxruntime", attempt, gate, stage, seed=3)
    argv = shlex.split(command)
    assert argv[:5] == ["edgesr", "compress", "recipe=r", "teacher=student", "seed=3"]
    assert "remedies: [qat], qat_steps: 120," in command and "batch_size: 4" in command
    assert "calibration_slices: 64" in command and "bias_correction" not in command
    assert (
        load_recipe("quickstart", [a for a in argv[2:] if a.startswith("stages=")]).stages[0].qat_steps == 120
    )


@pytest.mark.parametrize("path", sorted(RECIPES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_validates_and_its_students_build(path):
    recipe = load_recipe(path.stem)
    assert recipe.teacher in list_teachers() and recipe.description
    teacher_spec = runner._teacher(recipe).spec
    for index, stage in enumerate(recipe.stages):
        if stage.student:  # the student's options are checked by its builder (unknown keys raise)
            assert create_model(stage.student, **stage.student_options) is not None
        if stage.starts_from_checkpoint:
            runner._check_existing_student(index, stage, teacher_spec)  # shipped, and fits the teacher


def test_the_quickstart_is_prune_then_int8():
    recipe = load_recipe("quickstart")
    assert recipe.teacher == "rdn-mr-x2" and [s.kind for s in recipe.stages] == ["prune", "quantize"]


def test_distill_then_prune_chain_and_the_pruned_model_reloads(tiny_dataset, tiny_teacher, tmp_path):
    recipe = _recipe(tmp_path, tiny_teacher, tiny_dataset.path.parent)
    out = tmp_path / "chain"
    short = "steps: 2, batch_size: 2, patch: 8, eval_every: 2, warmup: 1"
    first = f"{{kind: distill, student: rdn_tiny, {short}}}"
    second = f"{{kind: prune, ratio: 0.5, round_to: 1, {short}}}"
    stages = [f"stages=[{first}, {second}]"]
    assert main(["compress", f"recipe={recipe}", f"out={out}", *stages]) == 0
    report = json.loads((out / "report.json").read_text())
    distilled, pruned = report["stages"]
    assert pruned["name"] == "2-prune" and pruned["params"] < 0.5 * distilled["params"]
    model, spec, meta = load_for_inference(out / "2-prune" / "model")
    assert meta["layer_shapes"] and sum(p.numel() for p in model.parameters()) == pruned["params"]
    assert spec.sr is not None and spec.sr.receptive_radius >= 1
    with pytest.raises(ConfigError, match="ratio"):
        load_recipe(recipe, ["stages.0.kind=prune", "stages.0.ratio=1.5"])
    # A later stage re-run with other options: its folder deleted, the earlier stage is reused as it is.
    import shutil

    distilled_weights = (out / "1-distill" / "model" / "model.safetensors").read_bytes()
    shutil.rmtree(out / "2-prune")
    milder = f"{{kind: prune, ratio: 0.25, round_to: 1, {short}}}"
    assert (
        main(["compress", f"recipe={recipe}", f"out={out}", "resume=true", f"stages=[{first}, {milder}]"])
        == 0
    )
    assert (out / "1-distill" / "model" / "model.safetensors").read_bytes() == distilled_weights
    again = json.loads((out / "report.json").read_text())["stages"]
    assert again[0] == distilled and again[1]["params"] > pruned["params"]  # a quarter pruned, not half


def test_a_prune_stage_reaches_a_parameter_target(tiny_dataset, tiny_teacher, tmp_path, monkeypatch):
    recipe = _recipe(tmp_path, tiny_teacher, tiny_dataset.path.parent)
    teacher, _, _ = load_for_inference(tiny_teacher)
    budget = sum(p.numel() for p in teacher.parameters()) // 2
    short = "steps: 2, batch_size: 2, patch: 8, eval_every: 2, warmup: 1"
    stage = f"stages=[{{kind: prune, target_params: {budget}, round_to: 1, {short}}}]"
    assert main(["compress", f"recipe={recipe}", f"out={tmp_path / 'small'}", stage]) == 0
    [pruned] = json.loads((tmp_path / "small" / "report.json").read_text())["stages"]
    assert 0.6 * budget <= pruned["params"] <= budget
    # Taylor importance scores channels with the stage's loss on its training batches.
    calls = []
    real = runner._taylor_loss
    monkeypatch.setattr(runner, "_taylor_loss", lambda *a: calls.append(a) or real(*a))
    taylor = f"stages=[{{kind: prune, ratio: 0.5, importance: taylor, round_to: 1, {short}}}]"
    assert main(["compress", f"recipe={recipe}", f"out={tmp_path / 'taylor'}", taylor]) == 0
    [(stage, previous, teacher_candidate, _, dataset)] = calls
    loss = real(stage, previous, teacher_candidate, 0, dataset)(teacher_candidate.model)
    assert 0 < loss.item() < float("inf")
    with pytest.raises(ConfigError, match="give one target, not both"):
        load_recipe(recipe, ["stages.0.kind=prune", "stages.0.target_params=100", "stages.0.target_macs=1e6"])


def test_a_prune_stage_can_remove_dense_blocks_too_and_the_shallow_model_reloads(
    tiny_dataset, tiny_teacher, tmp_path, capsys
):
    recipe = _recipe(tmp_path, tiny_teacher, tiny_dataset.path.parent)
    short = "steps: 2, batch_size: 2, patch: 8, eval_every: 2, warmup: 1"
    stage = f"stages=[{{kind: prune, ratio: 0.5, round_to: 4, keep_blocks: [1], {short}}}]"
    assert main(["compress", f"recipe={recipe}", f"out={tmp_path / 'shallow'}", stage]) == 0
    report = json.loads((tmp_path / "shallow" / "report.json").read_text())
    model, _, meta = load_for_inference(tmp_path / "shallow" / "1-prune" / "model")
    assert len(model.blocks) == 1 and meta["layer_shapes"]["blocks"] == {"type": "ModuleList", "length": 1}
    assert sum(p.numel() for p in model.parameters()) == report["stages"][0]["params"]
    # What cannot be done is said before anything trains.
    bad = f"stages=[{{kind: prune, ratio: 0.5, keep_blocks: [0, 1], {short}}}]"
    assert main(["compress", f"recipe={recipe}", f"out={tmp_path / 'all'}", bad]) == 2
    assert "nothing to remove" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="only a prune stage"):
        load_recipe(recipe, ["stages.0.keep_blocks=[0]"])


def test_an_interrupted_stage_resumes_where_it_stopped(
    tiny_dataset, tiny_teacher, tmp_path, capsys, monkeypatch
):
    import edgesr.compress.runner as runner

    recipe = _recipe(tmp_path, tiny_teacher, tiny_dataset.path.parent)
    out = tmp_path / "out"
    real = runner.distill
    monkeypatch.setattr(runner, "distill", lambda *a, **k: real(*a, **(k | {"stop_at": 2})))  # as if Ctrl-C
    assert main(["compress", f"recipe={recipe}", f"out={out}"]) == 2
    assert "stopped at step 2 of 4" in capsys.readouterr().err
    assert not (out / "1-distill" / "stage.json").exists()
    monkeypatch.setattr(runner, "distill", real)
    assert main(["compress", f"recipe={recipe}", f"out={out}", "resume=true"]) == 0
    log = [json.loads(line) for line in (out / "1-distill" / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "to_teacher" in r] == [2, 4]  # continued (a restart logs 2 twice)


def test_a_stage_killed_before_its_first_checkpoint_starts_over_on_resume(
    tiny_dataset, tiny_teacher, tmp_path, capsys, monkeypatch
):
    """SIGKILL before the first ``eval_every`` leaves ``run/log.jsonl`` and no ``last/``: neither a
    run to continue nor an empty folder. ``resume=true`` starts that stage over."""
    recipe = _recipe(tmp_path, tiny_teacher, tiny_dataset.path.parent)
    out = tmp_path / "out"

    def killed(*args, **kwargs):
        kwargs["out"].mkdir(parents=True)
        (kwargs["out"] / "log.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
        raise KeyboardInterrupt  # what the runner sees of a kill is only the leftover folder

    monkeypatch.setattr(runner, "distill", killed)
    assert main(["compress", f"recipe={recipe}", f"out={out}"]) != 0
    monkeypatch.undo()
    assert main(["compress", f"recipe={recipe}", f"out={out}", "resume=true"]) == 0, capsys.readouterr().err
    log = [json.loads(line) for line in (out / "1-distill" / "run" / "log.jsonl").read_text().splitlines()]
    assert {"step": 1, "loss": 0.5} not in log  # the killed run's log went with it
    assert [r["step"] for r in log if "to_teacher" in r] == [2, 4]


@pytest.mark.parametrize(("bf16_units", "amp"), [(True, True), (True, False), (False, True)])
def test_distillation_runs_bf16_where_the_cpu_has_bf16_units_and_resumes_exactly(
    tiny_dataset, tiny_teacher, tmp_path, monkeypatch, bf16_units, amp
):
    """amp (the default) puts the teacher's and the student's forward passes under bf16 autocast on a
    CPU with BF16 units, never on one without them (emulated bf16 is slower) nor with amp=false; the
    weights stay fp32, a resumed run still equals an uninterrupted one bit for bit, and the teacher
    leaves the stage on its device in its own layout (it is scored and exported afterwards)."""
    monkeypatch.setattr("edgesr.device.cpu_has_native_bf16", lambda: bf16_units)
    recipe = _recipe(tmp_path, tiny_teacher, tiny_dataset.path.parent)
    real, seen, layouts, teacher_layouts = runner.distill, set(), [], set()

    def spying(teacher, student, **kwargs):
        convs = [("teacher", next(m for m in teacher.modules() if isinstance(m, torch.nn.Conv2d)))]
        convs += [("student", next(m for m in student.modules() if isinstance(m, torch.nn.Conv2d)))]

        def record(role: str) -> Any:  # training passes only (validation runs the student in fp32)
            def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
                if role == "teacher" or module.training:
                    seen.add((role, output.dtype))
                if role == "teacher":  # the teacher's activations follow its channels-last weights
                    teacher_layouts.add(output.is_contiguous(memory_format=torch.channels_last))

            return hook

        hooks = [conv.register_forward_hook(record(role)) for role, conv in convs]
        try:
            return real(teacher, student, **kwargs)
        finally:
            for hook in hooks:
                hook.remove()
            layouts.append(all(p.is_contiguous() and p.device.type == "cpu" for p in teacher.parameters()))

    monkeypatch.setattr(runner, "distill", spying)
    amp_arg = f"stages.0.amp={str(amp).lower()}"
    assert main(["compress", f"recipe={recipe}", f"out={tmp_path / 'full'}", amp_arg]) == 0
    expected = torch.bfloat16 if bf16_units and amp else torch.float32
    assert seen == {("teacher", expected), ("student", expected)}
    assert teacher_layouts == {True} and layouts == [True]  # channels-last in the run, restored after
    if expected == torch.float32:
        return
    # Interrupted after 2 of 4 steps, then resumed: the same weights, bit for bit.
    monkeypatch.setattr(runner, "distill", lambda *a, **k: spying(*a, **(k | {"stop_at": 2})))
    assert main(["compress", f"recipe={recipe}", f"out={tmp_path / 'split'}", amp_arg]) == 2
    monkeypatch.setattr(runner, "distill", spying)
    assert main(["compress", f"recipe={recipe}", f"out={tmp_path / 'split'}", amp_arg, "resume=true"]) == 0
    from safetensors.torch import load_file

    full = load_file(str(tmp_path / "full" / "1-distill" / "run" / "last" / "model.safetensors"))
    split = load_file(str(tmp_path / "split" / "1-distill" / "run" / "last" / "model.safetensors"))
    assert full.keys() == split.keys() and all(v.dtype == torch.float32 for v in full.values())
    for key in full:
        torch.testing.assert_close(full[key], split[key], rtol=0, atol=0, msg=key)


def test_feature_distillation_matches_named_layers_through_adapters(tiny_dataset, tiny_teacher, tmp_path):
    """rdn_tiny (16 features) taught by rdn_lite-width features: 1x1 adapters where widths differ,
    trained and checkpointed with the student; an unknown layer names itself."""
    from edgesr.bench.timing import latency_inputs
    from edgesr.compress.distill import FeatureMatcher

    teacher, spec, _ = load_for_inference(tiny_teacher)
    student = create_model("rdn_lite", scale=2)
    example = tuple(latency_inputs(spec, 32).values())
    matcher = FeatureMatcher(teacher, student, ("blocks.1", "global_fusion"), example)
    assert set(matcher.adapters) == {"blocks__1", "global_fusion"}  # 32 student -> 16 teacher channels
    teacher(*example), student(*example)
    assert matcher.loss().item() > 0
    matcher.remove()
    with pytest.raises(ConfigError, match="no layer 'blocks.7'"):
        FeatureMatcher(teacher, student, ("blocks.7",), example)

    recipe = _recipe(tmp_path, tiny_teacher, tiny_dataset.path.parent)
    out = tmp_path / "features"
    argv = ["compress", f"recipe={recipe}", f"out={out}", "stages.0.student=rdn_lite",
            "stages.0.feature_layers=[blocks.1,global_fusion]", "stages.0.feature_weight=0.5"]  # fmt: skip
    assert main(argv) == 0
    log = [json.loads(line) for line in (out / "1-distill" / "run" / "log.jsonl").read_text().splitlines()]
    assert any("to_features" in r for r in log)
    assert (out / "1-distill" / "run" / "feature_adapters").is_dir()  # resumable with the student
    model, _, meta = load_for_inference(out / "1-distill" / "model")
    assert meta["model"] == "rdn_lite" and not model._forward_hooks  # shipped without adapters or hooks
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ConfigError, match="feature_layers"):
        load_recipe(recipe, ["stages.0.feature_weight=0.5"])


def test_gan_distillation_trains_a_discriminator_and_matches_texture(tiny_dataset, tmp_path):
    """SRGAN students: the perceptual distance to the teacher's output and an adversarial term; the
    discriminator is checkpointed with the run (resumable) and not shipped with the student."""
    torch.manual_seed(0)
    teacher = save_model(tmp_path / "gan", create_model("srgan_tiny", scale=2), "srgan_tiny", {"scale": 2})
    recipe = _recipe(tmp_path, teacher, tiny_dataset.path.parent)
    out = tmp_path / "gan-out"
    argv = ["compress", f"recipe={recipe}", f"out={out}", "stages.0.student=srgan_tiny",
            "stages.0.perceptual_weight=1.0", "stages.0.adversarial_weight=1e-3",
            "stages.0.perceptual_steps=5"]  # fmt: skip
    assert main(argv) == 0
    log = [json.loads(line) for line in (out / "1-distill" / "run" / "log.jsonl").read_text().splitlines()]
    parts = next(r for r in log if "to_teacher" in r)
    assert {"perceptual", "adversarial", "discriminator"} <= parts.keys()
    assert (out / "1-distill" / "run" / "discriminator").is_dir()
    model, _, meta = load_for_inference(out / "1-distill" / "model")
    assert meta["model"] == "srgan_tiny"
    with pytest.raises(ConfigError, match="stages.0.adversarial_weight"):
        load_recipe(recipe, ["stages.0.adversarial_weight=-1"])


def test_a_recon_student_of_compressed_coils_runs_on_fewer_virtual_coils(
    tiny_teacher, tmp_path, tiny_dataset, capsys
):
    torch.manual_seed(0)
    teacher = save_model(
        tmp_path / "modl", create_model("modl_tiny", iterations=2), "modl_tiny", {"iterations": 2}
    )
    recipe = _recipe(tmp_path, teacher, tiny_dataset.path.parent, steps=0, student="student: modl_tiny")
    out = tmp_path / "cc"
    argv = ["compress", f"recipe={recipe}", f"out={out}", "stages.0.student_init=teacher", "stages.0.coils=3",
            "stages.0.student_options.cg_iterations=2"]  # fmt: skip
    assert main(argv) == 0
    _, spec, _ = load_for_inference(out / "1-distill" / "model")
    assert spec.recon is not None and spec.recon.coils == 3 and spec.inputs[0].channels == 6
    report = json.loads((out / "report.json").read_text())
    student = next(r for r in report["runs"] if r["model"] == "student")
    assert student["psnr"] > 0  # scored through the pipeline, which compresses the 8 simulated coils to 3
    # Only where it means something: not for an SR teacher, not with training.
    sr = ["compress", f"recipe={recipe}", f"out={tmp_path / 'sr'}", f"teacher={tiny_teacher}",
          "stages.0.student=rdn_tiny", "stages.0.student_init=teacher", "stages.0.coils=3"]  # fmt: skip
    assert main(sr) == 2
    assert "stages.0.coils=3: only for a recon teacher" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="training on compressed coils is not built"):
        load_recipe(recipe, ["stages.0.coils=3", "stages.0.steps=5"])


def test_a_missed_gate_exits_3_with_its_report_and_writes_no_card(
    tiny_dataset, tiny_teacher, tmp_path, capsys
):
    """A final model outside the recipe's gate is not a success: the report (the best figures reached)
    is written, the command exits with 3, and `card=` ships nothing unless the gate itself is loosened."""
    from edgesr.commands.compress import GATE_MISSED

    recipe = _recipe(tmp_path, tiny_teacher, tiny_dataset.path.parent)
    out, card = tmp_path / "out", tmp_path / "tiny-edge"
    # A gate no student meets: nothing lost at all (a learning rate this high spoils it for sure).
    strict = ["max_psnr_drop_db=0", "max_ssim_drop=0", "stages.0.lr=0.05"]
    assert main(["compress", f"recipe={recipe}", f"out={out}", f"card={card}", *strict]) == GATE_MISSED
    said = capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["gate"]["passed"] is False and "gate missed" in said
    assert "no model card written" in said and not card.exists()
    # Loosened on the command line (recorded in the resolved recipe), the same finished run ships.
    assert main(["compress", f"recipe={recipe}", f"out={out}", f"card={card}", "resume=true",
                 "max_psnr_drop_db=1000", "max_ssim_drop=2", "stages.0.lr=0.05"]) == 0  # fmt: skip
    assert (card / "model_card.json").is_file()
    assert "max_psnr_drop_db: 1000" in (out / "recipe.resolved.yaml").read_text()


@pytest.mark.slow
def test_two_gloo_processes_distill_like_one_and_rank_0_alone_writes(tiny_dataset, tiny_teacher, tmp_path):
    """`torchrun -m edgesr compress`: every rank trains its share of each global batch (DDP), rank 0
    writes the stages, the report and the card; the result is the one-process run's."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    recipe = _recipe(tmp_path, tiny_teacher, tiny_dataset.path.parent, steps=3)
    # FP32 (amp off): BF16 autocast rounds the two half-batches' gradients differently from the whole's.
    common = [
        f"recipe={recipe}",
        "device=cpu",
        "stages.0.batch_size=4",
        "stages.0.eval_every=3",
        "stages.0.amp=false",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "edgesr", "compress", *common, f"out={tmp_path / 'single'}"],
        capture_output=True, text=True, env=env, check=False, timeout=300,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29541"]
    outputs = [f"out={tmp_path / 'ddp'}", f"card={tmp_path / 'card'}"]
    ddp = subprocess.run(
        [*launch, "-m", "edgesr", "compress", *common, *outputs],
        capture_output=True, text=True, env=env, check=False, timeout=300,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stderr.count("gate passed") == 1  # one report, by rank 0
    assert (tmp_path / "card" / "model_card.json").is_file()
    one = load_file(tmp_path / "single" / "1-distill" / "model" / "model.safetensors")
    two = load_file(tmp_path / "ddp" / "1-distill" / "model" / "model.safetensors")
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=1e-5, atol=1e-6)
    report = json.loads((tmp_path / "ddp" / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == ["1-distill"]


def test_stages_finished_before_later_options_existed_are_reused_on_resume(
    tiny_dataset, tiny_teacher, tmp_path
):
    """A finished stage keeps being reused after edgesr added stage options: its fingerprint was made
    without them (``keep_blocks``, before 2026-11-30) and with the gate in every stage (before
    2026-12-01); another change still refuses it."""
    recipe = _recipe(tmp_path, tiny_teacher, tiny_dataset.path.parent)
    out = tmp_path / "out"
    assert main(["compress", f"recipe={recipe}", f"out={out}"]) == 0
    done_file = out / "1-distill" / runner.STAGE_DONE
    done = json.loads(done_file.read_text())
    loaded = load_recipe(recipe)
    teacher = runner._teacher(loaded)
    dataset = runner._dataset(loaded, runner.Console(quiet=True))
    current, earlier = runner._fingerprints(0, loaded.stages[0], teacher, loaded, dataset, {})
    assert current == done["fingerprint"] and len(earlier) == 2 and current not in earlier
    for old in sorted(earlier):
        done_file.write_text(json.dumps(done | {"fingerprint": old}))
        assert main(["compress", f"recipe={recipe}", f"out={out}", "resume=true"]) == 0
    done_file.write_text(json.dumps(done | {"fingerprint": "0" * 64}))
    assert main(["compress", f"recipe={recipe}", f"out={out}", "resume=true"]) == 2


def test_the_terminal_table_fits_80_columns_with_every_run_name_and_figure_whole():
    """In a CI log rich assumes 80 columns: run names stay on one line and no figure is cut."""
    from rich.console import Console

    from edgesr.commands.compress import runs_table

    def run(name, executed, psnr, p50, speedup):
        by_source = {"subj": {"psnr_db": psnr, "slices": 2}, "mni152-t1": {"psnr_db": psnr, "slices": 1}}
        return {
            "name": name, "executed_precision": executed, "psnr": psnr, "psnr_vs_teacher_db": psnr - 37.72,
            "by_source": by_source, "latency_ms": {"p50": p50}, "speedup_vs_teacher_torch_fp32": speedup,
        }  # fmt: skip

    runs = [
        run("teacher/torch/fp32", "fp32", 37.72, 2840.13, 1.0),
        run("2-quantize/onnxruntime/int8", "int8+fp32", 37.5, 25.0, 113.61),
        {"name": "1-prune/openvino/default", "error": "OpenVINO could not compile it"},
    ]
    report = {"dataset": {"split": "test", "images": 4, "templates": ["mni152-t1"]},
              "teacher": runs[0], "runs": runs}  # fmt: skip
    console = Console(width=80, record=True)
    console.print(runs_table(report, teacher="rdn-mr-x2"))
    lines = console.export_text().splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80 and not any("…" in line for line in lines)
    rows = {line.split()[0]: line.split()[1:] for line in lines if "/" in line}
    assert rows["2-quantize/onnxruntime/int8"] == ["int8+fp32", "37.50", "-0.22", "-0.22", "25.0", "113.61x"]
    assert rows["teacher/torch/fp32"][-2] == "2840.1"
    assert rows["1-prune/openvino/default"] == ["no", "result"]
