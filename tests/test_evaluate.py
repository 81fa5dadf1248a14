from __future__ import annotations

import numpy as np
import pytest
import torch
from rich.console import Console

from edgesr import baselines
from edgesr.evaluate import MethodScores, compare, recon_samples, score_recon, score_sr, sr_pairs
from edgesr.results import print_results


def test_sr_pairs_follow_the_protocol(tiny_dataset):
    pairs = list(sr_pairs(tiny_dataset, modality="MR", scale=2))
    assert pairs
    lr, hr, slice_id = pairs[0]
    assert hr.shape == (1, 1, 36, 32) and lr.shape == (1, 1, 18, 16)  # cropped to a multiple of 2
    assert float(hr.max()) <= 1.0  # divided by the volume maximum
    assert slice_id.startswith("fake-mr:")
    scores = score_sr(
        {"zero-fill": lambda x, s, _: baselines.sr_zero_fill(x, s)}, pairs, scale=2, degradation="mr-kspace"
    )
    summary = scores[0].summary()
    assert summary["slices"] == len(pairs) and summary["psnr_db"] > 30


def test_recon_samples_are_reproducible_and_limited(tiny_dataset):
    first = list(recon_samples(tiny_dataset, acceleration=4, max_slices=2))
    second = list(recon_samples(tiny_dataset, acceleration=4, max_slices=2))
    assert len(first) == 2
    for (a, id_a), (b, id_b) in zip(first, second, strict=True):
        assert id_a == id_b
        torch.testing.assert_close(a.kspace, b.kspace)
    scores = score_recon({"zero-filled": baselines.recon_zero_filled}, first)
    assert len(scores[0].psnr) == 2 and all(np.isfinite(scores[0].psnr))


def test_recon_samples_can_use_maps_estimated_from_acs(tiny_dataset):
    options = {"acceleration": 3, "max_slices": 1, "center_fraction": 0.25}
    (given, _), (estimated, _) = (
        next(recon_samples(tiny_dataset, **options)),
        next(recon_samples(tiny_dataset, **options, maps="lowres")),
    )
    torch.testing.assert_close(given.kspace, estimated.kspace)
    assert not torch.allclose(given.sens_maps, estimated.sens_maps)
    scores = score_recon(
        {"cg-sense": baselines.recon_cg_sense}, [(given, "simulated"), (estimated, "estimated")]
    )
    true_maps, estimated_maps = scores[0].psnr
    # Usable maps (garbage maps give < 20 dB); on real brain slices lowres maps match the true ones
    # (R = 4: 27.85 vs 27.64 dB), on this tiny 37x33 phantom with 8 ACS lines they cost some dB.
    assert estimated_maps > 30.0 and true_maps > 30.0


def test_comparison_names_the_best_baseline_and_those_beaten_on_every_slice():
    slices = ["a:1", "a:2", "b:1"]
    scores = [
        MethodScores("zero-filled", psnr=[20.0, 21.0, 22.0], slices=slices),
        MethodScores("cg-sense", psnr=[25.0, 24.0, 26.0], slices=slices),
        MethodScores("l1-wavelet", psnr=[27.0, 25.0, 26.5], slices=slices),
        MethodScores("net", psnr=[26.0, 26.0, 27.0], slices=slices),
    ]
    comparison = compare(scores, "net")
    assert comparison["best_baseline"] == "l1-wavelet"
    assert comparison["gain_db_over_best_baseline"] == round(79 / 3 - 78.5 / 3, 3)
    assert comparison["slices_below"] == ["a:1"] and comparison["min_gain_db_per_slice"] == -1.0
    assert comparison["baselines_beaten_on_every_slice"] == ["zero-filled", "cg-sense"]


def test_figures_are_also_given_per_source_volume():
    # Slice ids are "volume:index": the figures are grouped by the part before the last colon.
    scores = MethodScores(
        "net", psnr=[30.0, 32.0, 40.0], ssim=[0.8, 0.9, 0.99], gradient_ratio=[0.5, 0.7, 0.9],
        slices=["colin27-t1:3", "colin27-t1:9", "mni152-t1:3"],
    )  # fmt: skip
    by_source = scores.summary()["by_source"]
    assert by_source == {
        "colin27-t1": {"slices": 2, "psnr_db": 31.0, "ssim": 0.85, "gradient_energy_ratio": 0.6},
        "mni152-t1": {"slices": 1, "psnr_db": 40.0, "ssim": 0.99, "gradient_energy_ratio": 0.9},
    }
    from edgesr.data.sources import is_template

    assert is_template("mni152-t1") and not is_template("colin27-t1") and not is_template("unknown")
    # The compress report's "real scans" figure: slice-weighted over the sources that are not templates.
    from edgesr.compress.report import real_scan_psnr

    row = {"by_source": by_source | {"other-t2": {"slices": 1, "psnr_db": 34.0}}}
    assert real_scan_psnr(row, ["mni152-t1"]) == (30.0 + 32.0 + 34.0) / 3
    assert real_scan_psnr({"by_source": {}}, []) is None


def test_result_tables_keep_every_number_at_80_columns():
    """Piped output is 80 columns wide: numbers must never be cut, long method names may fold."""
    row = {
        "task": "recon", "modality": "MR", "acceleration": 4.0, "mask": "random", "maps": "simulated",
        "coils": 8, "slices": 32, "psnr_db": 28.211, "ssim": 0.8038, "nmse": 0.01571, "hfen": 0.5274,
        "gradient_energy_ratio": 0.483, "psnr_min_db": 25.927, "seconds_per_slice": 0.312,
    }  # fmt: skip
    rows = [row | {"method": "zero-filled"}, row | {"method": "deepcomplex_small (step 2000)"}]
    report = {"results": rows, "split": "test", "sources": ["colin27-t1"], "seconds": 1.0}
    console = Console(width=80, record=True)
    print_results(console, report)
    text = console.export_text()
    for value in ("28.21", "0.8038", "0.01571", "0.5274", "0.483", "25.93", "0.312", "zero-filled"):
        assert value in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_comparisons_per_source_and_on_real_scans_leave_the_template_out():
    slices = ["colin27-t1:1", "colin27-t1:2", "mni152-t1:1", "other:4"]
    scores = [
        MethodScores("bicubic", psnr=[30.0, 30.0, 30.0, 33.0], slices=slices),
        MethodScores("zero-fill", psnr=[31.0, 32.0, 30.0, 32.0], slices=slices),
        MethodScores("net", psnr=[32.0, 32.0, 40.0, 32.5], slices=slices),
    ]
    comparison = compare(scores, "net")
    # Overall, the template's +10 dB lifts the mean; the real scans alone gain far less.
    assert comparison["gain_db_over_best_baseline"] == round((136.5 - 125) / 4, 3)
    real = comparison["real_scans"]
    assert real["slices"] == 3 and real["best_baseline"] == "zero-fill"
    assert real["gain_db_over_best_baseline"] == round((96.5 - 95) / 3, 3)
    assert real["slices_below_per_slice_best_baseline"] == 1 and real["min_gain_db_per_slice"] == -0.5
    by_source = comparison["by_source"]
    assert by_source["mni152-t1"]["template"] and not by_source["colin27-t1"]["template"]
    assert by_source["colin27-t1"]["gain_db_over_best_baseline"] == 0.5
    assert by_source["other"]["best_baseline"] == "bicubic"
    assert by_source["other"]["gain_db_over_best_baseline"] == -0.5
    only_template = compare(
        [MethodScores(m.method, psnr=m.psnr[2:3], slices=slices[2:3]) for m in scores], "net"
    )
    assert only_template["real_scans"] is None


def test_recon_baselines_are_computed_once_per_setting_and_code(tiny_dataset, monkeypatch):
    """CG-SENSE and L1-wavelet are the same for every model on the same slices: a second evaluation
    reads their scores back (equal to the last digit) and computes only the model; another setting,
    or an unreadable entry, computes them again."""
    from edgesr import baseline_cache
    from edgesr.evaluate import ReconProtocol, evaluate_model
    from edgesr.models import create_model
    from edgesr.pipeline import TorchPredictor
    from tests.conftest import spec_for

    model = create_model("modl_tiny").eval()
    spec = spec_for(model, "modl_tiny")
    protocol = ReconProtocol(accelerations=(4.0,), coils=4)

    def run() -> dict:
        return evaluate_model(
            spec, TorchPredictor(model, spec), tiny_dataset, label="modl", split="val", max_slices=1,
            recon=protocol,
        )  # fmt: skip

    calls = []
    real_cg = baselines.recon_cg_sense
    monkeypatch.setattr(baselines, "recon_cg_sense", lambda *a, **k: calls.append(1) or real_cg(*a, **k))
    first = run()
    computed = len(calls)
    assert computed > 0 and len(list((tiny_dataset.path / baseline_cache.FOLDER).glob("*.json"))) == 1
    second = run()
    assert len(calls) == computed  # read back, not recomputed
    assert second["comparison"] == first["comparison"]
    untimed = [
        [{k: v for k, v in r.items() if k != "seconds_per_slice"} for r in x["results"]]
        for x in (first, second)
    ]
    assert untimed[0] == untimed[1]
    assert second["results"][:3] == first["results"][:3]  # the baselines' own timings come back too

    protocol = ReconProtocol(accelerations=(4.0,), coils=4, noise_std=0.01)
    run()
    assert len(calls) == 2 * computed  # another acquisition: computed and stored beside the first
    for entry in (tiny_dataset.path / baseline_cache.FOLDER).glob("*.json"):
        entry.write_text("{half")
    run()
    assert len(calls) == 3 * computed


def test_coil_maps_a_slice_cannot_calibrate_name_the_slice(tiny_dataset):
    """The tiny volume's 33 columns at 8 % ACS leave 3 calibration lines: ESPIRiT cannot calibrate,
    and the error says which slice and why."""
    import pytest

    from edgesr.errors import DataError

    with pytest.raises(DataError, match=r"fake-mr:\d+ \(val split, 37x33\): ESPIRiT needs at least 12 ACS"):
        next(recon_samples(tiny_dataset, acceleration=4, split="val", maps="espirit"))
    # The scoring protocol keeps at least 12 ACS lines, as scanners keep a fixed number of reference lines.
    sample, _ = next(
        recon_samples(tiny_dataset, acceleration=4, split="val", maps="espirit", min_acs_lines=12)
    )
    assert int(sample.mask.sum()) == 12 and bool(torch.isfinite(sample.sens_maps).all())


def test_the_baseline_command_and_evaluate_share_stored_recon_scores(tiny_dataset, monkeypatch, capsys):
    """`edgesr baseline task=recon` stores what it computes under the same key as `edgesr evaluate`: a
    second baseline run, and an evaluation of the same setting, compute no baseline again."""
    from edgesr.commands.baseline import BaselineConfig, run_baseline
    from edgesr.evaluate import ReconProtocol, evaluate_model
    from edgesr.models import create_model
    from edgesr.pipeline import TorchPredictor
    from tests.conftest import spec_for

    calls = []
    real_cg = baselines.recon_cg_sense
    monkeypatch.setattr(baselines, "recon_cg_sense", lambda *a, **k: calls.append(1) or real_cg(*a, **k))
    config = BaselineConfig(
        task="recon", root=str(tiny_dataset.path.parent), split="val", max_slices=1, accelerations=(4.0,),
        coils=4, format="json",
    )  # fmt: skip
    run_baseline(config)
    computed = len(calls)
    first = capsys.readouterr().out
    run_baseline(config)
    assert computed > 0 and len(calls) == computed
    assert _untimed(first) == _untimed(capsys.readouterr().out)
    model = create_model("modl_tiny").eval()
    spec = spec_for(model, "modl_tiny")
    evaluate_model(
        spec, TorchPredictor(model, spec), tiny_dataset, label="modl", split="val", max_slices=1,
        recon=ReconProtocol(accelerations=(4.0,), coils=4),
    )  # fmt: skip
    assert len(calls) == computed


def _untimed(report_json: str) -> list[dict]:
    import json

    return [{k: v for k, v in r.items() if "seconds" not in k} for r in json.loads(report_json)["results"]]


def test_a_gate_judges_the_real_scans_unless_told_every_slice(monkeypatch):
    """gated_scores: a template's slices left out (real_scans), or every slice (all, or no template)."""
    from edgesr.evaluate import gated_scores

    monkeypatch.setattr("edgesr.evaluate.is_template", lambda name: name == "atlas")
    score = {
        "psnr": 36.0, "ssim": 0.95,
        "by_source": {"scan": {"slices": 3, "psnr_db": 38.0, "ssim": 0.98},
                      "other": {"slices": 1, "psnr_db": 34.0, "ssim": 0.94},
                      "atlas": {"slices": 4, "psnr_db": 35.0, "ssim": 0.93}},
    }  # fmt: skip
    real = gated_scores(score, "real_scans")
    assert real["scored_on"] == "real_scans"
    assert real["psnr"] == pytest.approx(37.0) and real["ssim"] == pytest.approx(0.97)
    assert gated_scores(score, "all") == {"psnr": 36.0, "ssim": 0.95, "scored_on": "all"}
    no_template = score | {"by_source": {k: v for k, v in score["by_source"].items() if k != "atlas"}}
    assert gated_scores(no_template, "real_scans")["scored_on"] == "all"
