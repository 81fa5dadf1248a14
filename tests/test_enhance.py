from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from edgesr.cli import main
from edgesr.models import create_model
from edgesr.physics.degrade import upsampled_affine
from edgesr.physics.fft import to_complex
from edgesr.physics.simulate import simulate_multicoil
from edgesr.pipeline import TorchPredictor, infer
from tests.conftest import save_model, spec_for


def _random_sr_model(scale: int = 2, name: str = "rdn_tiny"):
    torch.manual_seed(0)
    model = create_model(name, scale=scale)
    torch.nn.init.normal_(model.to_image.weight, std=0.05)  # not the zero-initialised identity
    return model.eval()


@pytest.fixture
def sr_checkpoint(tmp_path):
    model = _random_sr_model()
    return save_model(tmp_path / "ckpt", model, "rdn_tiny", {"scale": 2, "upsampler": "zero-fill"})


@pytest.mark.parametrize("scale", [2, 3])
def test_tiled_inference_equals_whole_image(scale):
    model = _random_sr_model(scale)
    spec = spec_for(model, "rdn_tiny")
    predictor = TorchPredictor(model, spec)
    lr = np.random.default_rng(0).random((37, 31)).astype(np.float32)
    whole = infer(spec, predictor, lr, tile=0)
    tiled = infer(spec, predictor, lr, tile=8)  # the halo defaults to the spec's receptive radius
    assert whole.shape == (1, 37 * scale, 31 * scale)
    assert float(np.abs(whole - tiled).max()) < 1e-5 * float(np.abs(whole).max())
    rough = infer(spec, predictor, lr, tile=8, halo=0)
    assert float(np.abs(whole - rough).max()) > 1e-4  # the halo is what makes tiling exact


def test_upsampled_affine_keeps_the_field_of_view():
    affine = np.diag([2.0, 3.0, 5.0, 1.0])
    affine[:3, 3] = [10.0, 20.0, 30.0]
    hr = upsampled_affine(affine, 2, "ct-blur", (8, 6))
    np.testing.assert_allclose(np.diag(hr)[:3], [1.0, 1.5, 5.0])
    # HR voxel (0.5, 0.5) lies at LR coordinate 0 for the area grid: the same world point as LR voxel 0.
    np.testing.assert_allclose(hr @ [0.5, 0.5, 0, 1], affine @ [0, 0, 0, 1])


def test_enhance_nifti_keeps_dtype_and_scales_voxels(tmp_path, sr_checkpoint):
    data = (np.random.default_rng(0).random((19, 17, 3)) * 200).astype(np.int16)
    affine = np.diag([1.2, 1.4, 3.0, 1.0])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "lr.nii.gz")
    out = tmp_path / "sr.nii.gz"
    assert (
        main(["enhance", f"checkpoint={sr_checkpoint}", f"input={tmp_path / 'lr.nii.gz'}", f"output={out}"])
        == 0
    )
    image = nib.load(out)
    assert image.shape == (38, 34, 3)
    assert image.get_data_dtype() == np.int16
    np.testing.assert_allclose(image.header.get_zooms(), (0.6, 0.7, 3.0), rtol=1e-5)


def test_a_4d_nifti_keeps_its_volumes_each_enhanced_as_a_scan_of_its_own(tmp_path, sr_checkpoint, capsys):
    """A diffusion set: a bright b=0 volume and a dim b=1000 one. Each is normalised by its own maximum,
    so the 4-D result equals the two 3-D results; TR (pixdim[4]) and its unit survive."""
    rng = np.random.default_rng(2)
    bright, dim = rng.random((19, 17, 3)) * 2000, rng.random((19, 17, 3)) * 150
    affine = np.diag([1.2, 1.4, 3.0, 1.0])
    image = nib.Nifti1Image(np.stack([bright, dim], axis=-1).astype(np.float32), affine)
    image.header.set_zooms((1.2, 1.4, 3.0, 2500.0))
    image.header.set_xyzt_units("mm", "msec")
    nib.save(image, tmp_path / "dwi.nii.gz")
    for name, volume in (("b0", bright), ("b1000", dim)):
        nib.save(nib.Nifti1Image(volume.astype(np.float32), affine), tmp_path / f"{name}.nii.gz")

    def enhance(name: str, output: str) -> int:
        return main(
            ["enhance", f"checkpoint={sr_checkpoint}", f"input={tmp_path / name}", f"output={output}"]
        )

    assert enhance("dwi.nii.gz", str(tmp_path / "sr.nii.gz")) == 0
    assert "(2 x 3 x 38 x 34)" in " ".join(capsys.readouterr().err.split())  # volumes x slices x H x W
    result = nib.load(tmp_path / "sr.nii.gz")
    assert result.shape == (38, 34, 3, 2)
    np.testing.assert_allclose(result.header.get_zooms(), (0.6, 0.7, 3.0, 2500.0), rtol=1e-5)
    assert result.header.get_xyzt_units() == ("mm", "msec")
    for t, name in enumerate(("b0", "b1000")):
        assert enhance(f"{name}.nii.gz", str(tmp_path / f"sr_{name}.nii.gz")) == 0
        alone = nib.load(tmp_path / f"sr_{name}.nii.gz").get_fdata()
        np.testing.assert_allclose(result.get_fdata()[..., t], alone, rtol=1e-5, atol=1e-4)
    # NPY keeps the fourth axis as [T, Z, H, W]; PNG and TIFF cannot, and say so before any work.
    assert enhance("dwi.nii.gz", str(tmp_path / "sr.npy")) == 0
    assert np.load(tmp_path / "sr.npy").shape == (2, 3, 38, 34)
    capsys.readouterr()
    assert enhance("dwi.nii.gz", str(tmp_path / "sr.tif")) == 2
    assert "holds 2 volumes (4-D); write .nii.gz or .npy" in capsys.readouterr().err
    assert not (tmp_path / "sr.tif").exists()


def test_enhance_png_and_npy(tmp_path, sr_checkpoint):
    pixels = (np.random.default_rng(1).random((21, 15)) * 60000).astype(np.uint16)
    Image.fromarray(pixels).save(tmp_path / "lr.png")
    assert (
        main(
            [
                "enhance",
                f"checkpoint={sr_checkpoint}",
                f"input={tmp_path / 'lr.png'}",
                f"output={tmp_path / 'sr.png'}",
            ]
        )
        == 0
    )
    with Image.open(tmp_path / "sr.png") as image:
        result = np.asarray(image)
    assert result.shape == (42, 30) and result.dtype == np.uint16
    np.save(tmp_path / "lr.npy", pixels.astype(np.float32))
    assert (
        main(
            [
                "enhance",
                f"checkpoint={sr_checkpoint}",
                f"input={tmp_path / 'lr.npy'}",
                f"output={tmp_path / 'sr.npy'}",
            ]
        )
        == 0
    )
    assert np.load(tmp_path / "sr.npy").shape == (42, 30)


def test_bad_input_leaves_an_existing_output_untouched(tmp_path, sr_checkpoint, capsys):
    bad = np.ones((10, 10), dtype=np.float32)
    bad[3, 3] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    out = tmp_path / "sr.npy"
    np.save(out, np.zeros(3))
    before = out.read_bytes()
    assert (
        main(
            [
                "enhance",
                f"checkpoint={sr_checkpoint}",
                f"input={tmp_path / 'bad.npy'}",
                f"output={out}",
                "overwrite=true",
            ]
        )  # fmt: skip
        == 2
    )
    assert "NaN" in capsys.readouterr().err  # even when told to replace it: bad input writes nothing
    assert out.read_bytes() == before
    assert (
        main(
            [
                "enhance",
                f"checkpoint={sr_checkpoint}",
                f"input={tmp_path / 'none.npy'}",
                f"output={out}",
                "overwrite=true",
            ]
        )  # fmt: skip
        == 2
    )
    assert main(["enhance", "model=rdn-mr-x9", f"input={tmp_path / 'bad.npy'}", f"output={out}"]) == 2
    assert "no shipped model" in capsys.readouterr().err
    assert (
        sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    )  # no temporary left over


@pytest.mark.parametrize(("name", "coils"), [("modl_tiny", 6), ("deepcomplex_tiny", 6)])
def test_enhance_reconstructs_fastmri_kspace(tmp_path, name, coils):
    torch.manual_seed(0)
    options = {"coils": 4} if name.startswith("deepcomplex") else {}
    model = create_model(name, **options)
    ckpt = save_model(tmp_path / "ckpt", model, name, options)
    yy, xx = np.meshgrid(np.linspace(-1, 1, 40), np.linspace(-1, 1, 36), indexing="ij")
    image = torch.from_numpy(((yy**2 + xx**2) < 0.5).astype(np.float32) * 0.8)
    # Two slices acquired with one mask (one seed), in a scanner's arbitrary units.
    sample = simulate_multicoil(image, acceleration=3, seed=0, n_coils=coils, center_fraction=0.25)
    kspace = [to_complex(sample.kspace).numpy() * 1000.0] * 2
    with h5py.File(tmp_path / "raw.h5", "w") as f:
        f.create_dataset("kspace", data=np.stack(kspace))
    out = tmp_path / "recon.nii.gz"
    assert main(["enhance", f"checkpoint={ckpt}", f"input={tmp_path / 'raw.h5'}", f"output={out}"]) == 0
    result = np.asarray(nib.load(out).dataobj)
    assert result.shape == (40, 36, 2)
    inside = result[..., 0][(yy**2 + xx**2) < 0.3]
    assert np.median(inside) == pytest.approx(800.0, rel=0.3)  # back in the data's own units


def test_evaluate_writes_a_model_card(tmp_path, tiny_dataset, sr_checkpoint, capsys):
    card = tmp_path / "card"
    args = [
        "evaluate",
        f"checkpoint={sr_checkpoint}",
        f"root={tiny_dataset.path.parent}",
        f"card={card}",
        "format=json",
    ]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    methods = {r["method"] for r in report["results"]}
    assert {"bicubic", "zero-fill"} < methods and len(methods) == 3
    comparison = report["comparison"][0]
    assert comparison["best_baseline"] in ("bicubic", "zero-fill")
    model_card = json.loads((card / "model_card.json").read_text())
    assert (
        model_card["weights"]["sha256"]
        == hashlib.sha256((card / "model.safetensors").read_bytes()).hexdigest()
    )
    assert "optimizer" not in json.loads((card / "checkpoint.json").read_text())
    assert main(["evaluate", f"checkpoint={card}", f"root={tiny_dataset.path.parent}", "split=val"]) == 0


def test_evaluate_recon_scores_each_coil_map_setting(tmp_path, tiny_dataset, capsys):
    model = create_model("modl_tiny")
    ckpt = save_model(tmp_path / "ckpt", model, "modl_tiny", {})
    args = [
        "evaluate", f"checkpoint={ckpt}", f"root={tiny_dataset.path.parent}", "split=val",
        "accelerations=[4]", "maps=[simulated,lowres]", "max_slices=1", "format=json",
    ]  # fmt: skip
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert [c["maps"] for c in report["comparison"]] == ["simulated", "lowres"]
    methods = {(r["maps"], r["method"]) for r in report["results"]}
    assert {("simulated", "cg-sense"), ("lowres", "cg-sense"), ("lowres", "zero-filled")} < methods
    assert main([*args[:-1], "maps=[estimated]"]) == 2  # an unknown map setting names the key
    assert "maps" in capsys.readouterr().err


def test_model_card_records_the_runs_it_was_initialised_from(tmp_path, tiny_dataset):
    """An SRGAN card must also carry its SRResNet pre-training command, or it cannot be reproduced."""
    model = create_model("rdn_tiny", scale=2)
    gpu = {"device": "NVIDIA H200", "processes": 1, "torch": "2.11.0+cu130"}
    pretrain = save_model(
        tmp_path / "pre" / "best", model, "rdn_tiny", {"scale": 2}, step=7,
        config={"init": "", "command": "edgesr train model=rdn_tiny out=pre"}, machine=gpu,
    )  # fmt: skip
    finetune = save_model(
        tmp_path / "gan" / "best", model, "rdn_tiny", {"scale": 2}, step=3,
        config={"init": str(pretrain), "command": f"edgesr train init={pretrain} out=gan"},
    )  # fmt: skip
    card = tmp_path / "card"
    args = ["evaluate", f"checkpoint={finetune}", f"root={tiny_dataset.path.parent}", f"card={card}"]
    assert main([*args, "max_slices=1"]) == 0
    training = json.loads((card / "model_card.json").read_text())["training"]
    assert training["command"].startswith("edgesr train init=")
    [stage] = training["initialised_from"]
    assert stage["command"] == "edgesr train model=rdn_tiny out=pre" and stage["steps"] == 7
    # Each stage names the machine it trained on (a card's wall-clock times mean little without it).
    assert stage["machine"] == gpu and training["machine"] == "not recorded by the training run"


def test_a_card_states_the_external_split_and_evaluate_says_when_the_data_differs(
    tmp_path, monkeypatch, sr_checkpoint, capsys
):
    import dataclasses

    import edgesr.data.prepare as prepare_module
    from edgesr.data.dataset import PreparedDataset
    from edgesr.data.prepare import PrepareConfig, prepare_dataset
    from edgesr.data.sources import Source, SourceVolume

    yy, xx = np.meshgrid(np.linspace(-1, 1, 36), np.linspace(-1, 1, 30), indexing="ij")
    blobs = np.stack([np.exp(-((yy - 0.01 * k) ** 2 + xx**2) * 3) * 100 for k in range(70)]).astype(
        np.float32
    )
    (tmp_path / "f").write_bytes(b"f")
    own = Source("own-mr", "MR", "d", "test", "CC0", locate=lambda: tmp_path / "f",
                 load=lambda p: SourceVolume(blobs, (1, 1, 1)))  # fmt: skip
    other = np.ascontiguousarray(blobs[:30, ::-1] * 3)
    elsewhere = dataclasses.replace(
        own, name="elsewhere-mr", role="external", load=lambda p: SourceVolume(other, (1, 1, 1))
    )
    monkeypatch.setattr(prepare_module, "SOURCES", (own, elsewhere))
    root = tmp_path / "data"
    prepare_dataset(PrepareConfig(root=str(root)))
    card = tmp_path / "card"
    assert (
        main(["evaluate", f"checkpoint={sr_checkpoint}", f"root={root}", f"card={card}", "max_slices=2"]) == 0
    )
    written = json.loads((card / "model_card.json").read_text())
    assert written["data_fingerprint"]["id"] == PreparedDataset(root).fingerprint["id"]
    assert written["evaluation"]["split"] == "test" and written["evaluation"]["sources"] == ["own-mr"]
    assert written["external"]["split"] == "external" and written["external"]["sources"] == ["elsewhere-mr"]
    [line] = written["headline"]
    assert line["test_real_scans"]["slices"] == 2
    assert set(line["external"]["by_source"]) == {"elsewhere-mr"}
    assert {d["name"]: d["role"] for d in written["data"]} == {"own-mr": "train", "elsewhere-mr": "external"}
    capsys.readouterr()
    # The same card on the same data: no warning. On a data set whose external source is gone: a warning.
    assert main(["evaluate", f"checkpoint={card}", f"root={root}", "max_slices=1"]) == 0
    assert "not the one this model's card was measured on" not in capsys.readouterr().out
    # Sources left out by the user's own choice are not "missing"; a choice with nothing to score in
    # the split says which sources the split has.
    assert main(["evaluate", f"checkpoint={card}", f"root={root}", "max_slices=1", "sources=[own-mr]"]) == 0
    assert "not the one this model's card was measured on" not in capsys.readouterr().out
    assert main(["evaluate", f"checkpoint={card}", f"root={root}", "split=external", "sources=[own-mr]"]) == 2
    said = " ".join("".join(capsys.readouterr()).split())
    assert "none of the chosen sources (own-mr) has MR slices in the external split" in said
    assert "its MR sources there: elsewhere-mr" in said
    monkeypatch.setattr(prepare_module, "SOURCES", (own,))
    prepare_dataset(PrepareConfig(root=str(root)))
    assert main(["evaluate", f"checkpoint={card}", f"root={root}", "max_slices=1", "format=json"]) == 0
    said = capsys.readouterr()
    assert "not the one this model's card was measured on" in " ".join(said.err.split())
    assert json.loads(said.out)["data_differs_from_card"] == ["elsewhere-mr missing (test not installed?)"]


def test_a_teacher_re_trained_from_itself_keeps_the_chain_it_came_from(tmp_path, tiny_dataset):
    """A shipped teacher fine-tuned with init=<its own folder> and re-carded into that folder: the card
    still names the run it started from, with the hash of the weights that were there."""
    model = create_model("rdn_tiny", scale=2)
    shipped = save_model(
        tmp_path / "shipped", model, "rdn_tiny", {"scale": 2}, step=7,
        config={"init": "", "command": "edgesr train model=rdn_tiny out=first"},
    )  # fmt: skip
    before = hashlib.sha256((shipped / "model.safetensors").read_bytes()).hexdigest()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01)
    again = save_model(
        tmp_path / "again" / "best", model, "rdn_tiny", {"scale": 2}, step=3,
        config={"init": str(shipped), "command": f"edgesr train init={shipped} out=again"},
    )  # fmt: skip
    args = [
        "evaluate",
        f"checkpoint={again}",
        f"root={tiny_dataset.path.parent}",
        f"card={shipped}",
        "max_slices=1",
    ]
    assert main(args) == 0
    card = json.loads((shipped / "model_card.json").read_text())
    [stage] = card["training"]["initialised_from"]
    assert stage["steps"] == 7 and stage["command"] == "edgesr train model=rdn_tiny out=first"
    assert stage["weights_sha256"] == before != card["weights"]["sha256"]


def test_a_shipped_model_re_carded_in_place_keeps_its_training_and_a_student_card_is_refused(
    tmp_path, tiny_dataset, capsys
):
    """Re-carding the same weights (say, on a data set with more external sources) refreshes the
    figures only: the shipped folder has no run log, and its weights are not their own starting point.
    A compressed student's card holds its recipe's figures and is refused before any work is done."""
    model = create_model("rdn_tiny", scale=2)
    run = save_model(
        tmp_path / "run" / "best", model, "rdn_tiny", {"scale": 2}, step=5,
        config={"init": "", "command": "edgesr train model=rdn_tiny out=run"},
    )  # fmt: skip
    (tmp_path / "run" / "log.jsonl").write_text('{"step": 5, "seconds": 42.0}\n')
    shipped = tmp_path / "shipped"
    root = f"root={tiny_dataset.path.parent}"
    assert main(["evaluate", f"checkpoint={run}", root, f"card={shipped}", "max_slices=1"]) == 0
    first = json.loads((shipped / "model_card.json").read_text())
    assert main(["evaluate", f"checkpoint={shipped}", root, f"card={shipped}", "max_slices=2"]) == 0
    again = json.loads((shipped / "model_card.json").read_text())
    assert again["training"] == first["training"] and again["training"]["initialised_from"] == []
    assert again["weights"] == first["weights"]
    assert again["headline"][0]["test_real_scans"]["slices"] == 2

    student = json.loads((shipped / "model_card.json").read_text())
    student["compression"] = {"command": "edgesr compress recipe=rdn_mr_x2_edge"}
    (shipped / "model_card.json").write_text(json.dumps(student))
    capsys.readouterr()
    assert main(["evaluate", f"checkpoint={shipped}", root, f"card={shipped}", "max_slices=1"]) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert "a compressed student's card" in said
    assert f"edgesr compress recipe=rdn_mr_x2_edge card={shipped}" in said
    assert json.loads((shipped / "model_card.json").read_text()) == student  # untouched


def test_a_teacher_re_trained_from_itself_twice_keeps_its_whole_history(tmp_path, tiny_dataset):
    """The second fine-tune of a shipped folder from itself: the folder's metadata names itself as its
    init, so the chain must continue from the folder's card, not loop on the folder."""
    model = create_model("rdn_tiny", scale=2)
    first = save_model(
        tmp_path / "first" / "best", model, "rdn_tiny", {"scale": 2}, step=7,
        config={"init": "", "command": "edgesr train model=rdn_tiny out=first"},
    )  # fmt: skip
    shipped = tmp_path / "shipped"
    root = f"root={tiny_dataset.path.parent}"
    assert main(["evaluate", f"checkpoint={first}", root, f"card={shipped}", "max_slices=1"]) == 0
    for round_, steps in ((1, 3), (2, 5)):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.01)
        again = save_model(
            tmp_path / f"again{round_}" / "best", model, "rdn_tiny", {"scale": 2}, step=steps,
            config={"init": str(shipped), "command": f"edgesr train init={shipped} out=again{round_}"},
        )  # fmt: skip
        assert main(["evaluate", f"checkpoint={again}", root, f"card={shipped}", "max_slices=1"]) == 0
    training = json.loads((shipped / "model_card.json").read_text())["training"]
    assert training["command"] == f"edgesr train init={shipped} out=again2" and training["steps"] == 5
    chain = training["initialised_from"]
    assert [(stage["command"], stage["steps"]) for stage in chain] == [
        (f"edgesr train init={shipped} out=again1", 3),
        ("edgesr train model=rdn_tiny out=first", 7),
    ]


def test_a_card_says_what_its_weights_were_trained_on(tmp_path, tiny_dataset):
    """``data`` is the data set the card was measured on, which may have grown since training;
    ``trained_on`` is what the training run recorded, or for older runs what their first card said."""
    model = create_model("rdn_tiny", scale=2)
    recorded = {
        "id": "0123456789abcdef",
        "modality": "MR",
        "sources": [{"name": "fake-mr", "slices": {"train": 9}}],
    }
    run = save_model(
        tmp_path / "run" / "best", model, "rdn_tiny", {"scale": 2},
        config={"init": "", "command": "edgesr train out=run", "training_data": recorded},
    )  # fmt: skip
    root = f"root={tiny_dataset.path.parent}"
    assert main(["evaluate", f"checkpoint={run}", root, f"card={tmp_path / 'new'}", "max_slices=1"]) == 0
    assert json.loads((tmp_path / "new" / "model_card.json").read_text())["trained_on"] == recorded

    # A run from before the record, re-carded over its first card: that card's MR training sources.
    with torch.no_grad():
        model.to_image.weight.add_(0.01)
    old = save_model(tmp_path / "old" / "best", model, "rdn_tiny", {"scale": 2}, config={"init": ""})
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    first_card = {
        "spec": {"intensity": {"modality": "MR"}},
        "data": [
            {"name": "colin27-t1", "modality": "MR", "package": "debian:mricron-data", "input_sha256": "a0"},
            {
                "name": "cranium-ct",
                "modality": "CT",
                "package": "debian:invesalius-examples",
                "input_sha256": "3b",
            },
        ],
        "weights": {"sha256": hashlib.sha256((old / "model.safetensors").read_bytes()).hexdigest()},
    }
    (shipped / "model_card.json").write_text(json.dumps(first_card))
    assert main(["evaluate", f"checkpoint={old}", root, f"card={shipped}", "max_slices=1"]) == 0
    card = json.loads((shipped / "model_card.json").read_text())
    assert [s["name"] for s in card["trained_on"]["sources"]] == ["colin27-t1"]
    assert "previous card" in card["trained_on"]["recorded_by"]
    assert [d["name"] for d in card["data"]] == ["fake-mr"]  # the data set measured on now
    # Without either, the card says it does not know rather than guessing.
    assert main(["evaluate", f"checkpoint={old}", root, f"card={tmp_path / 'bare'}", "max_slices=1"]) == 0
    assert json.loads((tmp_path / "bare" / "model_card.json").read_text())["trained_on"] is None


def test_enhance_warns_when_an_mr_image_is_stored_finer_than_acquired(tmp_path, sr_checkpoint, capsys):
    from tests.physics.test_spectrum import _interpolated, _natural_image

    stored = (_interpolated(_natural_image(64, 56), (0.4, 1.0)) * 4095).astype(np.uint16)
    Image.fromarray(stored).save(tmp_path / "interpolated.png")
    out = tmp_path / "sr.png"
    assert (
        main(
            [
                "enhance",
                f"checkpoint={sr_checkpoint}",
                f"input={tmp_path / 'interpolated.png'}",
                f"output={out}",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert (
        f"warning: {tmp_path / 'interpolated.png'}: this MR image looks reconstructed on a finer grid" in err
    )
    assert out.exists()  # a warning, not a refusal: the user may still want the result
    Image.fromarray((_natural_image(64, 56) * 4095).astype(np.uint16)).save(tmp_path / "natural.png")
    assert (
        main(
            [
                "enhance",
                f"checkpoint={sr_checkpoint}",
                f"input={tmp_path / 'natural.png'}",
                f"output={out}",
                "overwrite=true",
            ]
        )  # fmt: skip
        == 0
    )
    assert "finer grid" not in capsys.readouterr().err


def test_nifti_scaling_and_types_survive_and_png_is_refused_for_values_it_cannot_hold(
    tmp_path, sr_checkpoint, capsys
):
    """From the real-file sweep: scaled int16 NIfTI came back as 0/1, int64 NIfTI crashed nibabel, floats and
    negative values were rounded or clipped into a PNG."""
    rng = np.random.default_rng(2)
    values = rng.random((24, 20, 2))  # 0..1
    scaled = nib.Nifti1Image(np.round(values * 30000).astype(np.int16), np.eye(4))
    scaled.header.set_slope_inter(1 / 30000, 0)
    nib.save(scaled, tmp_path / "scaled.nii.gz")
    out = tmp_path / "sr.nii.gz"
    assert (
        main(
            ["enhance", f"checkpoint={sr_checkpoint}", f"input={tmp_path / 'scaled.nii.gz'}", f"output={out}"]
        )
        == 0
    )
    result = nib.load(out).get_fdata()
    assert result.dtype.kind == "f" and 0.1 < result.mean() < 0.9 and len(np.unique(result)) > 100

    nib.save(
        nib.Nifti1Image((values * 1000).astype(np.int64), np.eye(4), dtype=np.int64), tmp_path / "i64.nii.gz"
    )
    assert (
        main(
            [
                "enhance",
                f"checkpoint={sr_checkpoint}",
                f"input={tmp_path / 'i64.nii.gz'}",
                f"output={out}",
                "overwrite=true",
            ]
        )  # fmt: skip
        == 0
    )
    assert nib.load(out).get_data_dtype() == np.int32

    np.save(tmp_path / "float.npy", values[..., 0].astype(np.float32))
    png = tmp_path / "sr.png"
    assert (
        main(["enhance", f"checkpoint={sr_checkpoint}", f"input={tmp_path / 'float.npy'}", f"output={png}"])
        == 2
    )
    assert "PNG holds unsigned 8 or 16-bit integers" in capsys.readouterr().err and not png.exists()


def test_a_cifti_file_is_refused_by_name(tmp_path, sr_checkpoint, capsys):
    cifti = Path(nib.__file__).parent / "tests" / "data" / "row_major.dconn.nii"
    if not cifti.exists():
        pytest.skip("nibabel's test data has no CIFTI file here")
    assert (
        main(["enhance", f"checkpoint={sr_checkpoint}", f"input={cifti}", f"output={tmp_path / 'o.nii.gz'}"])
        == 2
    )
    assert "a Cifti2Image, not a NIfTI-1/2 image" in capsys.readouterr().err


def test_a_missing_input_is_named_before_the_output_is_judged(tmp_path, sr_checkpoint, capsys):
    # A folder output needs a DICOM input; with no input at all, the missing input is the problem to name.
    missing = tmp_path / "nope"
    args = ["enhance", f"checkpoint={sr_checkpoint}", f"input={missing}", f"output={tmp_path / 'series'}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no such file or folder" in err and "needs a DICOM input" not in err
    assert not (tmp_path / "series").exists()


def test_values_clipped_to_the_inputs_integer_type_are_counted(tmp_path, sr_checkpoint, capsys):
    # An 8-bit image of hard 0/255 edges: the zero-fill base rings below 0 and above 255 around them.
    data = np.zeros((20, 18, 1), dtype=np.uint8)
    data[5:15, 4:12] = 255
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "edges.nii.gz")
    out = tmp_path / "sr.nii.gz"
    assert (
        main(
            ["enhance", f"checkpoint={sr_checkpoint}", f"input={tmp_path / 'edges.nii.gz'}", f"output={out}"]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert f"warning: {out}: " in err and "outside the input's uint8 range and were clipped to 0..255" in err
    assert nib.load(out).get_data_dtype() == np.uint8
    # As floats nothing is clipped, and nothing is said.
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), tmp_path / "float.nii.gz")
    assert (
        main(
            [
                "enhance",
                f"checkpoint={sr_checkpoint}",
                f"input={tmp_path / 'float.nii.gz'}",
                f"output={out}",
                "overwrite=true",
            ]  # fmt: skip
        )
        == 0
    )
    assert "were clipped" not in capsys.readouterr().err
