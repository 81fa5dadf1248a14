"""The Python API: what integrators import, the same results as the command, safe from several threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import edgesr
from edgesr.cli import main as cli_main
from edgesr.errors import ConfigError, DataError
from edgesr.models import create_model
from edgesr.physics.fft import to_complex
from edgesr.physics.simulate import simulate_multicoil
from edgesr.pipeline import TorchPredictor, infer
from edgesr.train.checkpoint import load_for_inference, weights_sha256
from tests.conftest import save_model

# The stable public API: a name leaves or changes only with a major version (and this test).
PUBLIC = [
    "ConfigError",
    "DataError",
    "EdgesrError",
    "Enhancer",
    "EnhancerResult",
    "ImageVolume",
    "KSpaceVolume",
    "ModelSpec",
    "PreparedDataset",
    "Provenance",
    "TorchPredictor",
    "__version__",
    "finish",
    "infer",
    "list_shipped",
    "list_students",
    "list_teachers",
    "load_for_inference",
    "load_image",
    "load_kspace",
    "prepare",
    "run",
    "teacher_path",
]


def test_the_public_names_are_listed_and_resolve():
    assert sorted(edgesr.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert getattr(edgesr, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'Enhancr'"):
        edgesr.Enhancr  # noqa: B018


def test_enhance_gives_the_pipelines_result_with_geometry_and_provenance(ct_checkpoint):
    enhancer = edgesr.Enhancer.from_checkpoint(ct_checkpoint, device="cpu")
    assert (enhancer.task, enhancer.scale) == ("sr", 2)
    hu = np.random.default_rng(0).normal(40, 30, (2, 37, 31)).astype(np.float32)
    hu[:, :4] = -1000  # air
    result = enhancer.enhance(hu, spacing=(3.0, 0.9, 0.7), units="hu", tile=16)

    model, spec, _ = load_for_inference(ct_checkpoint)
    expected = infer(spec, TorchPredictor(model, spec), hu, units="hu", tile=0)
    assert result.image.shape == (2, 74, 62)
    np.testing.assert_allclose(result.image, expected, atol=1e-3)  # tiles are exact
    assert result.spacing == pytest.approx((3.0, 0.45, 0.35))
    assert result.units == "hu" and result.affine is None
    assert result.provenance.weights_sha256 == weights_sha256(ct_checkpoint)
    assert (result.provenance.runtime, result.provenance.architecture) == ("torch", "rdn_tiny")
    assert "rdn_tiny" in repr(enhancer)

    # A 2-D slice and (row, column) spacing.
    single = enhancer.enhance(hu[0], spacing=(0.9, 0.7), units="hu")
    np.testing.assert_allclose(single.image[0], expected[0], atol=1e-3)
    assert single.spacing == pytest.approx((1.0, 0.45, 0.35))


def test_bad_calls_name_the_problem(ct_checkpoint, tmp_path):
    enhancer = edgesr.Enhancer.from_checkpoint(ct_checkpoint, device="cpu")
    image = np.full((20, 20), 40.0, dtype=np.float32)
    with pytest.raises(DataError, match="cannot tell whether these values are Hounsfield units"):
        enhancer.enhance(image)
    with pytest.raises(DataError, match="spacing"):
        enhancer.enhance(image, spacing=(0.0, 1.0), units="hu")
    bad = image.copy()
    bad[3, 4] = np.nan
    with pytest.raises(DataError, match="1 NaN/Inf values"):
        enhancer.enhance(bad, units="hu")
    with pytest.raises(DataError, match="expected a 2-D image or 3-D volume"):
        enhancer.enhance(np.zeros((2, 2, 8, 8), dtype=np.float32), units="hu")
    with pytest.raises(DataError, match="torch tensor"):
        enhancer.enhance(torch.zeros(8, 8), units="hu")
    np.save(tmp_path / "slice.npy", image)
    with pytest.raises(ConfigError, match="carries its own"):
        enhancer.enhance(tmp_path / "slice.npy", spacing=(1.0, 1.0))
    with pytest.raises(ConfigError, match="SR model: call enhance"):
        enhancer.reconstruct(np.zeros((2, 8, 8), dtype=np.complex64))
    # The commands' model= / checkpoint= / artifact= choice: exactly one, each to its own builder.
    same = edgesr.Enhancer.from_source(checkpoint=ct_checkpoint, device="cpu")
    assert same.provenance == enhancer.provenance
    with pytest.raises(
        ValueError, match="exactly one of model, checkpoint or artifact .given: model, checkpoint"
    ):
        edgesr.Enhancer.from_source(model="rdn-ct-x2", checkpoint=ct_checkpoint)
    with pytest.raises(ValueError, match="given: none"):
        edgesr.Enhancer.from_source()
    with pytest.raises(DataError, match="manifest"):
        edgesr.Enhancer.from_source(artifact=ct_checkpoint)  # a checkpoint is not an artifact


def test_a_model_runs_in_bf16_on_request_and_says_so(ct_checkpoint, tmp_path, capsys):
    """``precision="bf16"``: torch autocast, recorded in the provenance; close to FP32; not for artifacts."""
    hu = np.random.default_rng(1).normal(40, 30, (1, 29, 23)).astype(np.float32)
    full = edgesr.Enhancer.from_checkpoint(ct_checkpoint, device="cpu")
    half = edgesr.Enhancer.from_source(checkpoint=ct_checkpoint, device="cpu", precision="bf16")
    assert (full.provenance.precision, half.provenance.precision) == ("fp32", "bf16+fp32")
    expected = full.enhance(hu, units="hu").image
    np.testing.assert_allclose(half.enhance(hu, units="hu").image, expected, atol=0.02 * np.ptp(expected))
    with pytest.raises(ValueError, match="precision must be fp32 or bf16"):
        edgesr.Enhancer.from_checkpoint(ct_checkpoint, precision="int8")
    with pytest.raises(ValueError, match="an artifact runs at the precision it was exported"):
        edgesr.Enhancer.from_source(artifact=tmp_path, precision="bf16")
    # The command: the same option, refused for an artifact before anything runs.
    np.save(tmp_path / "hu.npy", hu)
    argv = ["enhance", f"checkpoint={ct_checkpoint}", f"input={tmp_path / 'hu.npy'}", "units=hu"]
    assert cli_main([*argv, f"output={tmp_path / 'sr.npy'}", "precision=bf16"]) == 0
    assert cli_main(["enhance", f"artifact={tmp_path}", f"input={tmp_path / 'hu.npy'}",
                            f"output={tmp_path / 'x.npy'}", "precision=bf16"]) == 2  # fmt: skip
    assert "an artifact runs at the precision it was exported" in capsys.readouterr().err


def test_one_enhancer_from_several_threads_gives_the_serial_results(ct_checkpoint):
    enhancer = edgesr.Enhancer.from_checkpoint(ct_checkpoint, device="cpu")
    rng = np.random.default_rng(1)
    images = [rng.normal(0, 300, (1, 23 + i, 19 + 2 * i)).astype(np.float32) - 200 for i in range(6)]
    serial = [enhancer.enhance(image, units="hu", tile=8).image for image in images]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            results[index] = enhancer.enhance(images[index], units="hu", tile=8).image
        except BaseException as exc:  # reported below: a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for index, expected in enumerate(serial):
        np.testing.assert_array_equal(results[index], expected)


def test_reconstruct_takes_arrays_and_matches_the_file_path(tmp_path):
    import h5py

    torch.manual_seed(0)
    model = create_model("modl_tiny")
    checkpoint = save_model(tmp_path / "modl", model, "modl_tiny", {})
    yy, xx = np.meshgrid(np.linspace(-1, 1, 40), np.linspace(-1, 1, 36), indexing="ij")
    image = torch.from_numpy(((yy**2 + xx**2) < 0.5).astype(np.float32) * 0.8)
    sample = simulate_multicoil(image, acceleration=3, seed=0, n_coils=4, center_fraction=0.25)
    kspace = to_complex(sample.kspace).numpy() * 1000.0  # [C, H, W], a scanner's arbitrary units
    mask = sample.mask.numpy().reshape(-1)

    enhancer = edgesr.Enhancer.from_checkpoint(checkpoint, device="cpu")
    result = enhancer.reconstruct(kspace * mask, mask=mask)
    assert result.image.shape == (1, 40, 36) and result.units == "magnitude"
    with h5py.File(tmp_path / "raw.h5", "w") as f:
        f.create_dataset("kspace", data=(kspace * mask)[None])
        f.create_dataset("mask", data=mask)
    from_file = enhancer.reconstruct(tmp_path / "raw.h5")
    np.testing.assert_allclose(result.image, from_file.image, rtol=1e-5, atol=1e-4)
    assert result.warnings == ()
    # Every line measured: it runs, and says there was nothing to reconstruct.
    complete = enhancer.reconstruct(kspace, mask=np.ones_like(mask)).warnings
    assert any("fully sampled" in w for w in complete)
    # A mask that claims lines the data do not hold, and a slice of no signal: said, and that slice's
    # image is zero (not the network's response to nothing).
    claimed = np.maximum(mask, np.roll(mask, 1))
    two = np.stack([kspace * mask, np.zeros_like(kspace)])
    result = enhancer.reconstruct(two, mask=claimed)
    assert any("acquired columns that hold only zeros" in w for w in result.warnings)
    assert any("slice(s) 1 hold no signal" in w for w in result.warnings)
    assert not result.image[1].any() and result.image[0].any()

    with pytest.raises(ConfigError, match="mask= is for k-space arrays"):
        enhancer.reconstruct(tmp_path / "raw.h5", mask=mask)
    with pytest.raises(DataError, match="mask has shape"):
        enhancer.reconstruct(kspace, mask=mask[:-1])
    with pytest.raises(DataError, match="k-space must be complex"):
        enhancer.reconstruct(np.abs(kspace), mask=mask)
    with pytest.raises(ConfigError, match="recon model: call reconstruct"):
        enhancer.enhance(np.ones((8, 8), dtype=np.float32))


def test_enhance_reports_progress_tile_by_tile(ct_checkpoint):
    """Large volumes: a progress bar's feed, (done, total) after each tile, total = the tiles yielded."""
    enhancer = edgesr.Enhancer.from_checkpoint(ct_checkpoint, device="cpu")
    hu = np.random.default_rng(3).normal(40, 30, (2, 37, 31)).astype(np.float32) - 1000
    calls: list[tuple[int, int]] = []
    result = enhancer.enhance(
        hu, units="hu", tile=16, progress=lambda done, total: calls.append((done, total))
    )
    tiles = 2 * 3 * 2  # 2 slices x ceil(37/16) x ceil(31/16)
    assert calls == [(done, tiles) for done in range(1, tiles + 1)]
    np.testing.assert_array_equal(result.image, enhancer.enhance(hu, units="hu", tile=16).image)
