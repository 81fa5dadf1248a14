"""Every shipped teacher loads, matches its model card, and runs through `edgesr enhance`."""

from __future__ import annotations

import hashlib
import json

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from edgesr.cli import main
from edgesr.data.images import load_image
from edgesr.models._probe import receptive_radius
from edgesr.physics.fft import to_complex
from edgesr.physics.simulate import simulate_multicoil
from edgesr.results import setting_title
from edgesr.teachers import list_teachers, teacher_path
from edgesr.train.checkpoint import load_for_inference, load_model
from tests.conftest import card_sources


def _card(name: str) -> dict:
    return json.loads((teacher_path(name) / "model_card.json").read_text())


SR_TEACHERS = [t for t in list_teachers() if _card(t)["model"].startswith(("rdn", "srgan"))]
RECON_TEACHERS = [t for t in list_teachers() if t not in SR_TEACHERS]


@pytest.mark.parametrize("name", list_teachers())
def test_card_matches_the_weights(name):
    folder = teacher_path(name)
    card = _card(name)
    assert (
        card["weights"]["sha256"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    )
    # Every teacher reproduces from its card: trained, or blended from two recorded trainings.
    assert card["training"]["command"].startswith(("edgesr train", "edgesr interpolate"))
    if card["training"]["command"].startswith("edgesr interpolate"):
        blend = card["training"]["interpolation"]
        chain = [c["command"] for c in card["training"]["initialised_from"]]
        assert chain and all(c.startswith("edgesr train") for c in chain)
        assert {blend["gan"]["checkpoint"], blend["pixel"]["checkpoint"]} <= {
            c["checkpoint"] for c in card["training"]["initialised_from"]
        }
    model, meta = load_model(folder)
    assert meta["model"] == card["model"]
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("name", SR_TEACHERS)
@pytest.mark.parametrize("suffix", [".nii.gz", ".png", ".npy"])
def test_sr_teacher_enhances_each_format(tmp_path, name, suffix):
    scale = _card(name)["model_options"]["scale"]
    rng = np.random.default_rng(0)
    pixels = (rng.random((23, 19)) * 200 + 20).astype(np.uint8)
    source = tmp_path / f"lr{suffix}"
    if suffix == ".nii.gz":
        nib.save(nib.Nifti1Image(pixels[:, :, None], np.eye(4)), source)
    elif suffix == ".png":
        Image.fromarray(pixels).save(source)
    else:
        np.save(source, pixels.astype(np.float32))
    target = tmp_path / f"sr{suffix}"
    argv = ["enhance", f"model={name}", f"input={source}", f"output={target}"]
    if _card(name)["spec"]["intensity"]["modality"] == "CT":
        # Non-negative 8-bit values could be HU of soft tissue or already the model's units: a CT
        # model asks (tests/test_pipeline.py), so say it.
        argv.append("units=raw")
    assert main(argv) == 0
    assert load_image(target).data.shape == (1, 23 * scale, 19 * scale)


@pytest.mark.parametrize("name", list_teachers())
def test_every_teacher_carries_its_spec(name):
    """The spec written by `edgesr upgrade` agrees with the card and the run's recorded settings."""
    model, spec, meta = load_for_inference(teacher_path(name))
    assert _card(name)["spec"] == meta["spec"] == spec.to_dict()
    data = meta["config"]["data"]
    if spec.sr is not None:
        assert spec.intensity.modality == data["modality"] and spec.sr.scale == data["scale"]
        assert spec.sr.upsampler == model.upsampler
        assert spec.sr.receptive_radius == receptive_radius(model, spec.sr.scale)
        assert (spec.intensity.modality == "CT") == (spec.intensity.hu_offset == 1024.0)
    else:
        assert spec.recon.coils == getattr(model, "coils", 0)


def _write_disk_raw(path, height: int, width: int) -> None:
    """A fastMRI-style HDF5 of one simulated 8-coil, R=4 acquisition of a disk (ACS 8 % of the columns)."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    image = torch.from_numpy(((yy**2 + xx**2) < 0.5).astype(np.float32))
    sample = simulate_multicoil(image, acceleration=4, seed=0, n_coils=8)
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=to_complex(sample.kspace).numpy()[None])


@pytest.mark.parametrize("name", RECON_TEACHERS)
def test_recon_teacher_reconstructs_hdf5(tmp_path, name):
    _write_disk_raw(tmp_path / "raw.h5", 48, 40)
    out = tmp_path / "recon.nii.gz"
    assert main(["enhance", f"model={name}", f"input={tmp_path / 'raw.h5'}", f"output={out}"]) == 0
    assert nib.load(out).shape == (48, 40, 1)


def test_espirit_on_a_small_matrix_is_refused_with_the_way_out(tmp_path, capsys):
    """A 64-column scan at 8 % ACS has 5 centre lines: ESPIRiT needs 12, and the error says which file,
    and that the low-resolution maps would do; nothing is written."""
    _write_disk_raw(tmp_path / "epi.h5", 64, 64)
    out = tmp_path / "recon.nii.gz"
    argv = ["enhance", "model=modl-r4", f"input={tmp_path / 'epi.h5'}", f"output={out}", "maps=espirit"]
    assert main(argv) != 0
    error = capsys.readouterr().err
    assert (
        "epi.h5" in error and "5 contiguous line(s)" in error and "at least 12 (maps=lowres needs 3)" in error
    )
    assert not out.exists()
    assert main([*argv[:-1], "maps=lowres"]) == 0 and out.exists()


@pytest.mark.data
@pytest.mark.parametrize("name", list_teachers())
def test_teacher_still_beats_the_baselines_on_real_test_slices(real_data_root, capsys, name):
    """A regression guard on a few real test slices: the shipped weights keep the card's promise.

    A pixel-loss teacher must still beat, on every slice scored, each baseline that its card says it
    beat on every test slice (cards from before that record promised all baselines). An adversarial
    (SRGAN) teacher trades PSNR for sharpness, so it must instead have a lower HFEN than bicubic.
    """
    argv = ["evaluate", f"model={name}", f"root={real_data_root}", "max_slices=2", "format=json"]
    argv.append(f"sources=[{','.join(card_sources(_card(name)))}]")
    if name in RECON_TEACHERS:
        argv.append("accelerations=[4]")
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    if "loss.adversarial_weight" in _card(name)["training"]["command"]:
        hfen = {r["method"]: r["hfen"] for r in report["results"]}  # one SR setting: one row per method
        model_hfen = next(v for method, v in hfen.items() if method not in ("bicubic", "zero-fill"))
        assert model_hfen < hfen["bicubic"]
        return
    claims = {setting_title(c): c for c in _card(name)["evaluation"]["comparison"]}
    for comparison in report["comparison"]:
        promised = claims[setting_title(comparison)].get("baselines_beaten_on_every_slice")
        if promised is None:
            assert comparison["gain_db_over_best_baseline"] > 0, comparison
            assert comparison["slices_below_per_slice_best_baseline"] == 0, comparison
        else:
            assert promised, f"{name} beats no baseline on every test slice: not a teacher to ship"
            assert set(promised) <= set(comparison["baselines_beaten_on_every_slice"]), comparison
