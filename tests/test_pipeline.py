"""Intensity conventions through `edgesr enhance`, on files in real scanner formats (HU, rescale slopes,
padding, odd sizes): the output must equal the model run on the correctly mapped array.

The expected values are computed here by hand from the written convention (CT: HU + 1024 clipped at 0,
padding excluded and restored; everything divided by the volume's maximum), independently of
:mod:`edgesr.pipeline`.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from pydicom.uid import generate_uid

from edgesr.baselines import interpolate_base, sr_bicubic
from edgesr.cli import main
from edgesr.data.images import load_image
from edgesr.models import create_model
from edgesr.physics.degrade import degrade
from tests.conftest import needs_real_data, save_model, write_dicom_slice

PADDING_HU = -3024.0  # what many CT scanners store outside the reconstruction circle


def _random_model(scale: int, upsampler: str):
    torch.manual_seed(0)
    model = create_model("rdn_tiny", scale=scale, upsampler=upsampler)
    torch.nn.init.normal_(model.to_image.weight, std=0.05)  # not the zero-initialised identity
    return model.eval()


@pytest.fixture
def ct_checkpoint(tmp_path):
    model = _random_model(2, "bicubic")
    return model, save_model(
        tmp_path / "ct", model, "rdn_tiny", {"scale": 2, "upsampler": "bicubic"}, modality="CT"
    )


def _head_ct_hu(slices: int, height: int = 37, width: int = 31) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic head CT in HU: air, soft tissue, a bone ring, and scanner padding outside a circle.

    Returns (hu [S, H, W] float32, padding mask [S, H, W]).
    """
    yy, xx = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    r = np.sqrt(yy**2 + (xx * 1.1) ** 2)
    rng = np.random.default_rng(0)
    volumes, pads = [], []
    for k in range(slices):
        hu = np.full((height, width), -1000.0)
        hu[r < 0.72] = 1100.0 + 50 * k  # skull
        hu[r < 0.62] = 35.0 + rng.normal(0, 8, size=hu.shape)[r < 0.62]  # brain
        pad = r > 0.95
        hu[pad] = PADDING_HU
        volumes.append(np.rint(hu))
        pads.append(pad)
    return np.stack(volumes).astype(np.float32), np.stack(pads)


def _expected_ct(model, hu: np.ndarray, padding: np.ndarray, scale: int = 2) -> np.ndarray:
    """The model on the correctly mapped array, mapped back to HU, padding restored (nearest LR pixel)."""
    mapped = np.where(padding, 0.0, np.maximum(hu + 1024.0, 0.0))
    reference = mapped[~padding].max()
    outputs = []
    with torch.no_grad():
        for image in mapped / reference:
            lr = torch.from_numpy(image.astype(np.float32))[None, None]
            base = interpolate_base(lr, scale, "bicubic", "ct-blur")
            outputs.append(model(lr, base)[0, 0].numpy())
    out = np.stack(outputs) * reference - 1024.0
    # Padding gets its own values back, from the nearest LR pixel (the area grid: HR i <- LR i // s).
    hr_padding = padding.repeat(scale, axis=1).repeat(scale, axis=2)
    out[hr_padding] = hu.repeat(scale, axis=1).repeat(scale, axis=2)[hr_padding]
    return out


def test_ct_dicom_in_hu_with_intercept_and_padding(tmp_path, ct_checkpoint):
    """Signed stored pixels, RescaleIntercept -1024, PixelPaddingValue -2000 (= -3024 HU)."""
    model, ckpt = ct_checkpoint
    hu, padding = _head_ct_hu(3)
    folder = tmp_path / "ct_series"
    folder.mkdir()
    uid = generate_uid()
    for k, image in enumerate(hu):
        write_dicom_slice(
            folder / f"{k}.dcm", image + 1024.0, position_z=2.0 * k, instance=k + 1, series_uid=uid,
            intercept=-1024.0, signed=True, padding_value=int(PADDING_HU + 1024),
        )  # fmt: skip
    out = tmp_path / "sr.nii.gz"
    assert main(["enhance", f"checkpoint={ckpt}", f"input={folder}", f"output={out}"]) == 0
    result = np.moveaxis(np.asarray(nib.load(out).dataobj), 2, 0)
    assert nib.load(out).get_data_dtype() == np.int16  # HU need a signed type (stored pixels were int16)
    expected = _expected_ct(model, hu, padding)
    np.testing.assert_allclose(result, expected, atol=0.51)  # integer rounding of the output only
    assert (result[:, :2, :2] == PADDING_HU).all()  # padding restored, not enhanced


def test_ct_nifti_in_hu_needs_no_units(tmp_path, ct_checkpoint):
    """A CT NIfTI in HU (values below -200 HU mean HU); padding is told by value (< -1500 HU), and each
    padded pixel keeps its own value (two scanners' paddings side by side here)."""
    model, ckpt = ct_checkpoint
    hu, padding = _head_ct_hu(2, 35, 29)
    hu[:, :, 15:][padding[:, :, 15:]] = -2048.0
    source = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.moveaxis(hu, 0, 2), np.diag([0.5, 0.5, 2.0, 1.0])), source)
    out = tmp_path / "sr.nii.gz"
    assert main(["enhance", f"checkpoint={ckpt}", f"input={source}", f"output={out}"]) == 0
    result = np.moveaxis(np.asarray(nib.load(out).dataobj), 2, 0)
    np.testing.assert_allclose(result, _expected_ct(model, hu, padding), rtol=1e-5, atol=1e-2)


def test_ct_model_asks_for_units_when_it_cannot_tell(tmp_path, ct_checkpoint, capsys):
    _, ckpt = ct_checkpoint
    source = tmp_path / "soft_tissue.npy"
    np.save(source, np.random.default_rng(0).uniform(0, 80, (21, 19)).astype(np.float32))
    out = tmp_path / "sr.npy"
    assert main(["enhance", f"checkpoint={ckpt}", f"input={source}", f"output={out}"]) == 2
    err = capsys.readouterr().err
    assert "soft_tissue.npy" in err and "units=hu" in err and not out.exists()
    assert main(["enhance", f"checkpoint={ckpt}", f"input={source}", f"output={out}", "units=raw"]) == 0
    assert main(["enhance", f"checkpoint={ckpt}", f"input={source}", f"output={out}", "units=kelvin"]) == 2


def test_mr_dicom_with_a_rescale_slope(tmp_path):
    """Modality values = stored * RescaleSlope; an MR model sees them / the volume maximum."""
    model = _random_model(2, "zero-fill")
    ckpt = save_model(tmp_path / "mr", model, "rdn_tiny", {"scale": 2, "upsampler": "zero-fill"})
    stored = np.random.default_rng(1).integers(50, 900, size=(2, 33, 27)).astype(np.uint16)
    folder = tmp_path / "mr_series"
    folder.mkdir()
    uid = generate_uid()
    for k, image in enumerate(stored):
        write_dicom_slice(
            folder / f"{k}.dcm", image, position_z=3.0 * k, instance=k + 1, series_uid=uid,
            slope=2.5, intercept=0.0, modality="MR",
        )  # fmt: skip
    assert load_image(folder).meta["modality"] == "MR"
    out = tmp_path / "sr.npy"
    assert main(["enhance", f"checkpoint={ckpt}", f"input={folder}", f"output={out}"]) == 0
    values = stored.astype(np.float32) * 2.5
    reference = values.max()
    with torch.no_grad():
        lr = torch.from_numpy(values / reference)[:, None]
        expected = model(lr, interpolate_base(lr, 2, "zero-fill", "mr-kspace"))[:, 0].numpy() * reference
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-4, atol=1e-3 * reference)
    assert main(["enhance", f"checkpoint={ckpt}", f"input={folder}", f"output={out}", "units=hu"]) == 2


@needs_real_data
@pytest.mark.slow
def test_real_head_ct_in_hu_beats_bicubic(tmp_path, real_data_root):
    """The shipped CT teacher on real head CT slices written as a scanner would (DICOM in HU, intercept
    -1024, -3024 padding outside the scan circle), through the user's command."""
    from edgesr.data.dataset import PreparedDataset

    dataset = PreparedDataset(real_data_root)
    samples = list(dataset.slices("test", "CT"))[::4][:3]
    hr_hu = np.stack([s.image for s in samples]) - 1024.0  # the data set stores HU + 1024 (clipped at 0)
    lr = degrade(torch.from_numpy(hr_hu + 1024.0)[:, None], 2, "ct-blur")[:, 0].numpy() - 1024.0
    h, w = lr.shape[1:]
    yy, xx = np.meshgrid(np.arange(h) - h / 2 + 0.5, np.arange(w) - w / 2 + 0.5, indexing="ij")
    outside = np.sqrt(yy**2 + xx**2) > 0.5 * min(h, w)
    lr_stored = np.where(outside, PADDING_HU, np.rint(lr)) + 1024.0
    folder = tmp_path / "head_ct"
    folder.mkdir()
    uid = generate_uid()
    for k, image in enumerate(lr_stored):
        write_dicom_slice(
            folder / f"IM{k:04d}", image, position_z=1.5 * k, instance=k + 1, series_uid=uid,
            intercept=-1024.0, signed=True, padding_value=int(PADDING_HU + 1024),
        )  # fmt: skip
    out = tmp_path / "sr.nii.gz"
    assert main(["enhance", "model=rdn-ct-x2", f"input={folder}", f"output={out}"]) == 0
    sr = np.moveaxis(np.asarray(nib.load(out).dataobj, dtype=np.float32), 2, 0)
    inside = ~outside.repeat(2, axis=0).repeat(2, axis=1)
    assert (sr[:, ~inside] == PADDING_HU).all()
    bicubic = sr_bicubic(
        torch.from_numpy(np.where(outside, -1024.0, lr).astype(np.float32))[:, None], 2, "ct-blur"
    )
    bicubic = bicubic[:, 0].numpy()
    # The convention: HU range -1024..max, compared inside the scan circle.
    data_range = float(hr_hu.max()) + 1024.0

    def score(pred: np.ndarray) -> float:
        error = (pred - hr_hu)[:, inside]
        return float(10 * np.log10(data_range**2 / np.mean(error.astype(np.float64) ** 2)))

    model_db, bicubic_db = score(sr), score(bicubic)
    print(f"real head CT in HU: model {model_db:.2f} dB, bicubic {bicubic_db:.2f} dB")
    assert model_db > bicubic_db + 1.0


@pytest.mark.parametrize(("degradation", "scale"), [("mr-kspace", 2), ("mr-kspace", 4), ("ct-blur", 3)])
@pytest.mark.parametrize("size", [6, 7])
def test_every_lr_pixel_owns_scale_hr_pixels(degradation, scale, size):
    """Nearest-pixel upsampling on the degradation's grid (padding restore): no LR pixel is favoured."""
    from edgesr.pipeline import nearest_upsample

    index = np.arange(size, dtype=float)[None, :, None].repeat(size, axis=2)
    owners = nearest_upsample(index, scale, degradation)[0, :, 0]
    counts = np.bincount(owners.astype(int), minlength=size)
    assert counts[1:-1].tolist() == [scale] * (size - 2)  # the edge pixels take what the grid leaves
    assert (np.diff(owners) >= 0).all()


def test_given_coil_maps_are_compressed_with_the_kspace():
    """A model for 4 coils fed 6-coil data and its 6 true maps: both go to the same virtual coils, so
    the compressed k-space is still the SENSE forward model of the compressed maps."""
    from edgesr.data.kspace import KSpaceVolume
    from edgesr.physics.fft import to_complex
    from edgesr.physics.mri import MultiCoilSense
    from edgesr.physics.simulate import simulate_multicoil
    from edgesr.pipeline import prepare_recon
    from edgesr.spec import recon_spec

    yy, xx = np.meshgrid(np.linspace(-1, 1, 33), np.linspace(-1, 1, 29), indexing="ij")
    image = torch.from_numpy(((yy**2 + xx**2) < 0.6).astype(np.float32))
    sample = simulate_multicoil(image, acceleration=3, seed=1, n_coils=6, noise_std=0.0)
    raw = KSpaceVolume(to_complex(sample.kspace).numpy()[None], sample.mask.numpy(), "sim.h5", "fastmri")
    maps = to_complex(sample.sens_maps).numpy()[None]
    prepared = prepare_recon(recon_spec(coils=4), raw, maps=maps, reference=1.0)
    item = next(prepared.items())
    assert item.inputs["sens_maps"].shape == (1, 8, 33, 29)
    predicted = MultiCoilSense().A(sample.target[None], item.inputs["mask"], item.inputs["sens_maps"])
    torch.testing.assert_close(predicted, item.inputs["masked_kspace"], rtol=0, atol=1e-4)


def test_torch_predictor_runs_a_channels_last_copy_on_the_cpu_and_leaves_the_module_alone():
    """On the CPU the predictor runs a channels-last copy (faster convolutions, same outputs); the
    caller's module keeps its contiguous weights, which safetensors needs to save them."""
    from edgesr.pipeline import TorchPredictor
    from edgesr.spec import sr_spec

    torch.manual_seed(0)
    model = create_model("rdn_tiny", scale=2)
    spec = sr_spec(modality="MR", scale=2, degradation="mr-kspace", upsampler="zero-fill", receptive_radius=8)
    inputs = {"lr": torch.rand(1, 1, 13, 10)}
    inputs["base"] = interpolate_base(inputs["lr"], 2, "zero-fill", "mr-kspace")
    fast = TorchPredictor(model, spec, "cpu")
    plain = TorchPredictor(model, spec, "cpu", channels_last=False)
    assert (fast.memory_format, plain.memory_format) == ("channels_last", "contiguous")
    assert fast.module is not model and plain.module is model
    assert all(p.is_contiguous() for p in model.parameters())
    conv = next(m for m in fast.module.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast(inputs), plain(inputs), atol=1e-5, rtol=1e-5)


def test_torch_predictor_runs_bf16_autocast_on_request_and_names_it():
    """``precision="bf16"``: the convolutions under autocast, the output back in FP32, close to FP32;
    MoDL's solver stays in FP32 inside it (its FFTs have no BF16 form)."""
    from edgesr.physics.simulate import simulate_multicoil
    from edgesr.pipeline import TorchPredictor
    from edgesr.spec import recon_spec, sr_spec

    torch.manual_seed(0)
    model = create_model("rdn_tiny", scale=2)
    spec = sr_spec(modality="MR", scale=2, degradation="mr-kspace", upsampler="zero-fill", receptive_radius=8)
    inputs = {"lr": torch.rand(1, 1, 13, 10)}
    inputs["base"] = interpolate_base(inputs["lr"], 2, "zero-fill", "mr-kspace")
    half = TorchPredictor(model, spec, "cpu", precision="bf16")
    full = TorchPredictor(model, spec, "cpu")
    assert (half.executed_precision, full.executed_precision) == ("bf16+fp32", "fp32")
    out = half(inputs)
    assert out.dtype == torch.float32 and out.shape == (1, 1, 26, 20)
    torch.testing.assert_close(out, full(inputs), atol=0.05, rtol=0.05)  # BF16 keeps 8 bits of mantissa

    image = torch.rand(21, 19)
    sample = simulate_multicoil(image, acceleration=3, seed=1, n_coils=2, noise_std=0.0)
    modl = create_model("modl_tiny")
    recon_inputs = {
        "masked_kspace": sample.kspace[None].float(),
        "mask": sample.mask.view(1, 1, 1, -1).float(),
        "sens_maps": sample.sens_maps[None].float(),
    }
    modl_half = TorchPredictor(modl, recon_spec(coils=2), "cpu", precision="bf16")(recon_inputs)
    modl_full = TorchPredictor(modl, recon_spec(coils=2), "cpu")(recon_inputs)
    assert modl_half.dtype == torch.float32 and torch.isfinite(modl_half).all()
    torch.testing.assert_close(modl_half, modl_full, atol=0.05, rtol=0.05)
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16; got 'int8'"):
        TorchPredictor(model, spec, "cpu", precision="int8")
