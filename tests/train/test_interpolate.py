"""``edgesr interpolate``: a generator between its pixel-loss network and its GAN fine-tune (ESRGAN)."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from edgesr.cli import main
from edgesr.train.checkpoint import load_for_inference, load_model
from edgesr.train.interpolate import interpolate_weights
from tests.conftest import save_model


@pytest.fixture
def pixel_and_gan(tmp_path) -> tuple[Path, Path]:
    """An srgan_tiny x2 MR generator and a "GAN fine-tune" of it (its weights moved, its init the first)."""
    from edgesr.models import create_model

    torch.manual_seed(0)
    model = create_model("srgan_tiny", scale=2)
    options = {"scale": 2, "upsampler": "zero-fill"}
    pixel = save_model(tmp_path / "pixel", model, "srgan_tiny", options)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    gan = save_model(tmp_path / "gan", model, "srgan_tiny", options, config={"init": str(pixel)})
    return pixel, gan


def _diverged(checkpoint: Path) -> torch.nn.Module:
    model, _ = load_model(checkpoint)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    return model


def test_weights_blend_linearly_and_a_mismatch_is_named():
    pixel = {"conv.weight": torch.zeros(2, 3), "bn.num_batches_tracked": torch.tensor(4)}
    gan = {"conv.weight": torch.ones(2, 3), "bn.num_batches_tracked": torch.tensor(9)}
    blend = interpolate_weights(pixel, gan, gan_share=0.25)
    assert torch.equal(blend["conv.weight"], torch.full((2, 3), 0.25))
    assert int(blend["bn.num_batches_tracked"]) == 9  # counters are not averaged
    assert torch.equal(interpolate_weights(pixel, gan, gan_share=0.0)["conv.weight"], pixel["conv.weight"])
    with pytest.raises(ValueError, match=r"tensor conv.weight: shape \(2, 3\) .* \(3, 2\)"):
        interpolate_weights(pixel, {**gan, "conv.weight": torch.ones(3, 2)}, gan_share=0.5)
    with pytest.raises(ValueError, match="different tensors"):
        interpolate_weights(pixel, {"conv.weight": torch.ones(2, 3)}, gan_share=0.5)
    with pytest.raises(ValueError, match="gan_share"):
        interpolate_weights(pixel, gan, gan_share=1.5)


def test_auto_share_is_the_largest_that_keeps_every_val_scan_above_the_baselines(
    tiny_dataset, pixel_and_gan, tmp_path
):
    pixel, gan = pixel_and_gan
    out = tmp_path / "blend"
    root = f"root={tiny_dataset.path.parent}"
    assert main(["interpolate", f"pixel={pixel}", f"gan={gan}", root, "max_slices=2", f"out={out}"]) == 0
    meta = json.loads((out / "checkpoint.json").read_text())
    record = meta["interpolation"]
    trials = record["trials"]
    assert [t["gan_share"] for t in trials] == [round(1.0 - 0.1 * i, 1) for i in range(len(trials))]
    assert all(t["split"] == "val" for t in trials)
    passing = [t["gan_share"] for t in trials if t["slices_below_best_baseline"] == 0]
    # The search stops at the first share that passes; when none does it ends at 0 and takes it.
    assert record["gan_share"] == (passing[0] if passing else 0.0) == trials[-1]["gan_share"]
    assert passing in ([], [trials[-1]["gan_share"]])
    assert record["gan_started_from_pixel"] is True
    assert meta["config"]["init"] == str(gan) and meta["step"] == 0

    share = record["gan_share"]
    expected = interpolate_weights(
        load_file(str(pixel / "model.safetensors")),
        load_file(str(gan / "model.safetensors")),
        gan_share=share,
    )
    written = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(written[k], expected[k]) for k in expected)
    load_for_inference(out)  # a checkpoint like any other

    # Shipped with a card: the blend's record and the chain blend <- GAN run <- pixel run.
    card = tmp_path / "card"
    (tmp_path / "log.jsonl").write_text('{"step": 6, "seconds": 12.5}\n')  # the runs' log (their folder)
    assert main(["evaluate", f"checkpoint={out}", root, f"card={card}", "max_slices=1"]) == 0
    training = json.loads((card / "model_card.json").read_text())["training"]
    # The runs' time stays theirs; the blend, written beside them, trained nothing and says so.
    assert training["wall_clock_seconds"] is None and training["machine"]["device"].startswith("none")
    assert training["initialised_from"][0]["wall_clock_seconds"] == 12.5
    assert training["interpolation"]["gan_share"] == share
    assert [c["checkpoint"] for c in training["initialised_from"]][:2] == [str(gan), str(pixel)]


def test_a_given_share_and_what_is_refused(tiny_dataset, pixel_and_gan, tiny_checkpoint, tmp_path, capsys):
    pixel, gan = pixel_and_gan
    root = f"root={tiny_dataset.path.parent}"
    out = tmp_path / "half"
    assert main(["interpolate", f"pixel={pixel}", f"gan={gan}", "gan_share=0.5", root, f"out={out}"]) == 0
    a, b = load_file(str(pixel / "model.safetensors")), load_file(str(gan / "model.safetensors"))
    half = load_file(str(out / "model.safetensors"))
    assert all(torch.allclose(half[k], (a[k] + b[k]) / 2) for k in half if half[k].is_floating_point())

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    args = ["interpolate", f"pixel={pixel}", f"gan={gan}", root]
    assert main([*args, f"out={mine}"]) == 2  # a folder of the user's files is never replaced
    assert (mine / "notes.txt").read_text() == "keep me"
    assert "not an earlier blend" in capsys.readouterr().err
    other = shutil.copytree(tiny_checkpoint, tmp_path / "other-run")  # a training run's checkpoint
    assert main([*args, f"out={other}"]) == 2
    assert sorted(p.name for p in other.iterdir()) == sorted(p.name for p in tiny_checkpoint.iterdir())
    assert "interpolation" not in json.loads((other / "checkpoint.json").read_text())
    assert main([*args, "gan_share=0.25", f"out={out}"]) == 0  # an earlier blend is replaced
    assert json.loads((out / "checkpoint.json").read_text())["interpolation"]["gan_share"] == 0.25
    assert main([*args, f"out={gan}"]) == 2
    assert "one of the two networks" in capsys.readouterr().err
    assert main(["interpolate", f"pixel={tiny_checkpoint}", f"gan={gan}", root, f"out={tmp_path / 'x'}"]) == 2
    assert "only two trainings of one architecture" in capsys.readouterr().err
    broken = save_model(
        tmp_path / "diverged", _diverged(gan), "srgan_tiny", {"scale": 2, "upsampler": "zero-fill"}
    )
    assert main(["interpolate", f"pixel={pixel}", f"gan={broken}", root, f"out={tmp_path / 'x'}"]) == 2
    assert "NaN or Inf" in capsys.readouterr().err
    assert main([*args, "split=test", f"out={tmp_path / 'x'}"]) == 2
    assert "choose it on val" in capsys.readouterr().err
    assert main([*args, "gan_share=1.5", f"out={tmp_path / 'x'}"]) == 2
    assert main([*args, "gan_share=half", f"out={tmp_path / 'x'}"]) == 2
    assert main([*args, "gan_share=nan", f"out={tmp_path / 'x'}"]) == 2
    assert "a number in [0, 1] or auto" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_search_stops_at_the_first_share_that_keeps_every_real_scan_up(pixel_and_gan, monkeypatch):
    """Scores made up: slices below the baseline fall as the GAN's share falls, none from 0.6 down."""
    from edgesr.train import interpolate

    def fake_score(endpoints, share, dataset, *, split, max_slices=0):
        return {
            "gan_share": share,
            "split": split,
            "slices_below_best_baseline": max(0, round(10 * share) - 6),
        }

    monkeypatch.setattr(interpolate, "score_share", fake_score)
    endpoints = interpolate.load_endpoints(*pixel_and_gan)
    share, trials = interpolate.choose_gan_share(endpoints, dataset=None)  # type: ignore[arg-type]
    assert share == 0.6
    assert [t["gan_share"] for t in trials] == [1.0, 0.9, 0.8, 0.7, 0.6]  # nothing below 0.6 was scored

    monkeypatch.setattr(
        interpolate,
        "score_share",
        lambda e, s, d, **k: fake_score(e, s, d, **k) | {"slices_below_best_baseline": 3},
    )
    share, trials = interpolate.choose_gan_share(endpoints, dataset=None)  # type: ignore[arg-type]
    assert share == 0.0 and len(trials) == 11  # none passes: the pixel-loss end


def test_a_split_of_templates_only_cannot_choose(pixel_and_gan, monkeypatch, tiny_dataset):
    from edgesr import evaluate
    from edgesr.errors import DataError
    from edgesr.train import interpolate

    real = evaluate.evaluate_model

    def templates_only(*args, **kwargs):
        report = real(*args, **kwargs)
        return report | {"comparison": [c | {"real_scans": None} for c in report["comparison"]]}

    monkeypatch.setattr(evaluate, "evaluate_model", templates_only)
    endpoints = interpolate.load_endpoints(*pixel_and_gan)
    with pytest.raises(DataError, match="holds only templates"):
        interpolate.score_share(endpoints, 0.5, tiny_dataset, split="val")


def test_what_out_may_replace_and_what_it_leaves_alone(tiny_dataset, pixel_and_gan, tmp_path, capsys):
    """Only an earlier blend is replaced; devices, links, a user's <out>.old/.tmp and inputs are not."""
    pixel, gan = pixel_and_gan
    args = [
        "interpolate",
        f"pixel={pixel}",
        f"gan={gan}",
        "gan_share=0.5",
        f"root={tiny_dataset.path.parent}",
    ]

    def refused(out: str, words: str) -> None:
        assert main([*args, f"out={out}"]) == 2
        assert words in capsys.readouterr().err

    os.mkfifo(tmp_path / "fifo")
    refused(str(tmp_path / "fifo"), "is not a folder")  # never renamed, never opened (would hang)
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    refused(str(tmp_path / "dangling"), "is not a folder")
    (tmp_path / "afile").write_text("x")
    refused(str(tmp_path / "afile" / "sub"), "is not a folder")
    refused("/", "names no folder")
    (tmp_path / "res.old").mkdir()
    (tmp_path / "res.old" / "mine.txt").write_text("keep")
    refused(str(tmp_path / "res"), "res.old exists and is not an earlier blend")
    assert (tmp_path / "res.old" / "mine.txt").read_text() == "keep"
    assert main(["interpolate", f"pixel={gan}", f"gan={gan}", f"out={tmp_path / 'same'}"]) == 2
    assert "a blend needs two trainings" in capsys.readouterr().err

    # pixel=k reads k.old (an interrupted save's leftover): out=k would have deleted it.
    shutil.copytree(pixel, tmp_path / "k.old")
    assert main([*args[:1], f"pixel={tmp_path / 'k'}", *args[2:], f"out={tmp_path / 'k'}"]) == 2
    assert "one of the two networks" in capsys.readouterr().err
    assert (tmp_path / "k.old" / "model.safetensors").is_file()

    (tmp_path / "blend.tmp").mkdir()  # a user's folder that happens to have the name
    (tmp_path / "blend.tmp" / "mine.txt").write_text("keep")
    assert main([*args, f"out={tmp_path / 'blend'}"]) == 0
    assert (tmp_path / "blend.tmp" / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "blend" / "model.safetensors").stat().st_mode) == 0o666 & ~umask
    for share in ("inf", "nan", "0.5.5"):  # (values are YAML: "0x1" arrives as "1", as for every key)
        assert main([*args[:3], f"gan_share={share}", args[4], f"out={tmp_path / 'x'}"]) == 2
        assert "a number in [0, 1] or auto" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_relative_init_is_found_from_the_run_folder(tmp_path, monkeypatch):
    """A run records ``init`` relative to where it ran (``<there>/<out>/last``), not to today's folder."""
    from edgesr.models import create_model
    from edgesr.train import interpolate

    there = tmp_path / "project"
    model = create_model("srgan_tiny", scale=2)
    options = {"scale": 2, "upsampler": "zero-fill"}
    pixel = save_model(there / "runs" / "pixel" / "last", model, "srgan_tiny", options)
    config = {"init": "runs/pixel/last", "out": "runs/gan"}
    gan = save_model(there / "runs" / "gan" / "last", model, "srgan_tiny", options, config=config)
    monkeypatch.chdir(tmp_path)  # elsewhere: "runs/pixel/last" does not exist here
    assert interpolate.load_endpoints(pixel, gan).gan_started_from_pixel
    other = save_model(there / "runs" / "other" / "last", model, "srgan_tiny", options)
    assert not interpolate.load_endpoints(other, gan).gan_started_from_pixel
