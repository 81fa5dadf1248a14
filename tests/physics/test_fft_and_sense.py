from __future__ import annotations

import numpy as np
import pytest
import torch

from edgesr.physics import (
    MultiCoilSense,
    cartesian_mask,
    conjugate_gradient,
    fft2c,
    from_complex,
    ifft2c,
    to_complex,
)
from edgesr.physics.coils import espirit_maps, estimate_coil_maps, simulate_coil_maps, smooth_phase
from edgesr.physics.fft import complex_abs, complex_conj, complex_mul, dft_as_matmul
from edgesr.physics.mri import add_complex_noise


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _inner(a: torch.Tensor, b: torch.Tensor) -> complex:
    """Complex inner product <a, b> = sum conj(a) * b of channel-pair tensors."""
    return complex(torch.sum(torch.conj(to_complex(a)) * to_complex(b)))


def test_channel_pair_round_trip_and_layout():
    x = _randn(2, 6, 5, 7)
    z = to_complex(x)
    assert z.shape == (2, 3, 5, 7)
    torch.testing.assert_close(z.real[:, 1], x[:, 2])
    torch.testing.assert_close(z.imag[:, 1], x[:, 3])
    torch.testing.assert_close(from_complex(z), x)


def test_complex_helpers_match_torch_complex():
    a, b = _randn(1, 4, 5, 3, seed=1), _randn(1, 4, 5, 3, seed=2)
    torch.testing.assert_close(to_complex(complex_mul(a, b)), to_complex(a) * to_complex(b))
    torch.testing.assert_close(to_complex(complex_conj(a)), torch.conj(to_complex(a)))
    torch.testing.assert_close(complex_abs(a), to_complex(a).abs())


def test_odd_channel_count_is_rejected_with_shape():
    with pytest.raises(ValueError, match=r"\(1, 3, 4, 4\)"):
        to_complex(torch.zeros(1, 3, 4, 4))


@pytest.mark.parametrize("shape", [(37, 31), (32, 32), (16, 9)])
def test_fft2c_is_centered_orthonormal_numpy_equivalent(shape):
    x = _randn(1, 2, *shape)
    z = to_complex(x)[0, 0].numpy()
    expected = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(z), norm="ortho"))
    np.testing.assert_allclose(to_complex(fft2c(x))[0, 0].numpy(), expected, atol=1e-10)
    torch.testing.assert_close(ifft2c(fft2c(x)), x)
    # Adjointness of the unitary pair: <F x, y> = <x, F^H y>.
    y = _randn(1, 2, *shape, seed=3)
    assert abs(_inner(fft2c(x), y) - _inner(x, ifft2c(y))) <= 1e-10 * abs(_inner(x, ifft2c(y)))


@pytest.mark.parametrize("mask_rows", [1, 37])
def test_sense_operator_is_adjoint(mask_rows):
    height, width, coils = 37, 31, 4
    maps = simulate_coil_maps(height, width, coils, seed=5).double().unsqueeze(0)
    mask = cartesian_mask(width, 3, seed=1).double().view(1, 1, 1, width).expand(1, 1, mask_rows, width)
    A = MultiCoilSense()
    x, y = _randn(1, 2, height, width, seed=6), _randn(1, 2 * coils, height, width, seed=7)
    lhs, rhs = _inner(A(x, mask, maps), y), _inner(x, A.A_adjoint(y, mask, maps))
    assert abs(lhs - rhs) <= 1e-5 * abs(rhs)


@pytest.mark.parametrize("width", [31, 32])
def test_fft1c_is_the_centered_orthonormal_transform_along_the_width(width):
    from edgesr.physics.fft import fft1c, ifft1c

    x = _randn(2, 4, 5, width)
    z = to_complex(x).numpy()
    expected = np.fft.fftshift(np.fft.fft(np.fft.ifftshift(z, axes=-1), norm="ortho", axis=-1), axes=-1)
    np.testing.assert_allclose(to_complex(fft1c(x)).numpy(), expected, atol=1e-10)
    torch.testing.assert_close(ifft1c(fft1c(x)), x)
    with dft_as_matmul():  # the form exports use
        torch.testing.assert_close(fft1c(x), from_complex(torch.from_numpy(expected)))
        torch.testing.assert_close(ifft1c(fft1c(x)), x)


@pytest.mark.parametrize(("height", "width"), [(37, 31), (16, 24)])
def test_sense_normal_with_a_column_mask_equals_the_adjoint_of_the_forward(height, width):
    """The 1-D shortcut of ``A^H A`` (transforms along the width only) is the operator itself, in torch's
    complex dtype (eager) and on channel pairs (DFT-as-matmul, as exported), per batch item's mask."""

    coils = 3
    maps = torch.stack([simulate_coil_maps(height, width, coils, seed=s).double() for s in (5, 6)])
    mask = torch.stack([cartesian_mask(width, 3, seed=s).double().view(1, 1, width) for s in (1, 2)])
    A = MultiCoilSense()
    x = _randn(2, 2, height, width, seed=8)
    expected = A.A_adjoint(A(x, mask, maps), mask, maps)
    torch.testing.assert_close(A.normal(x, mask, maps), expected)
    with dft_as_matmul():
        torch.testing.assert_close(A.normal(x, mask, maps), expected)
    # A mask per k-space sample (not whole columns) takes the 2-D transforms.
    full_mask = mask.expand(2, 1, height, width).clone()
    full_mask[:, :, 0] = 1.0
    torch.testing.assert_close(
        A.normal(x, full_mask, maps), A.A_adjoint(A(x, full_mask, maps), full_mask, maps)
    )


@pytest.mark.parametrize(("height", "width"), [(7, 9), (8, 12), (5, 6)])
@pytest.mark.parametrize("axes", [1, 2])
def test_centered_filter_without_shifts_equals_the_centered_transforms(height, width, axes):
    """``F_c^H W F_c == F^H ifftshift(W) F`` for odd and even sizes, 1-D and 2-D, any real weights."""
    from edgesr.physics.fft import (
        centered_filter_complex,
        fft1c_complex,
        fft2c_complex,
        ifft1c_complex,
        ifft2c_complex,
    )

    generator = torch.Generator().manual_seed(height * width + axes)
    z = torch.randn(2, 3, height, width, dtype=torch.complex128, generator=generator)
    rows = 1 if axes == 1 else height
    weights = torch.rand(2, 1, rows, width, dtype=torch.float64, generator=generator)
    forward, inverse = (fft1c_complex, ifft1c_complex) if axes == 1 else (fft2c_complex, ifft2c_complex)
    expected = inverse(forward(z) * weights)
    torch.testing.assert_close(centered_filter_complex(z, weights, axes=axes), expected)
    with pytest.raises(ValueError, match="axes must be 1 or 2"):
        centered_filter_complex(z, weights, axes=3)


def test_exported_fft1c_keeps_dynamic_sizes_and_matches_eager():
    """The form torch.export traces (shifts as gathers, an unnormalised 1-D FFT scaled by a tensor)."""
    from edgesr.physics.fft import fft1c, ifft1c

    class Transforms(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return fft1c(x), ifft1c(x)

    dims = {"x": {2: torch.export.Dim("height", min=4, max=64), 3: torch.export.Dim("width", min=4, max=64)}}
    program = torch.export.export(Transforms(), (torch.randn(2, 4, 8, 11),), dynamic_shapes=dims)
    for height, width in ((8, 11), (13, 16)):  # the traced size and another, odd and even widths
        x = torch.randn(2, 4, height, width, generator=torch.Generator().manual_seed(height))
        for exported, eager in zip(program.module()(x), Transforms()(x), strict=True):
            torch.testing.assert_close(exported, eager, atol=1e-5, rtol=1e-5)


def test_sense_normal_complex_takes_any_mask_and_checks_shapes():
    from edgesr.physics.fft import to_complex as complex_of

    height, width, coils = 9, 10, 2
    maps = simulate_coil_maps(height, width, coils, seed=2).double().unsqueeze(0)
    x = _randn(1, 2, height, width, seed=9)
    A = MultiCoilSense()
    weights = torch.rand(1, 1, height, width, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for mask in (weights, weights[:, :, :1]):  # per sample, and whole columns (weights, not 0/1)
        expected = A.A_adjoint(A(x, mask, maps), mask, maps)
        torch.testing.assert_close(
            from_complex(A.normal_complex(complex_of(x), mask, complex_of(maps))), expected
        )
        torch.testing.assert_close(A.normal(x, mask, maps), expected)
    with pytest.raises(ValueError, match="complex"):
        A.normal_complex(x, weights, complex_of(maps))
    with pytest.raises(ValueError, match="mask must be"):
        A.normal_complex(complex_of(x), weights[0], complex_of(maps))
    with pytest.raises(ValueError, match=r"image must be \[B, 1, H, W\]"):
        A.normal_complex(complex_of(x)[..., :-1], weights, complex_of(maps))
    # A float32 image with float64 maps computes in float64, as A and A^H do.
    assert A.normal(x.float(), weights[:, :, :1], maps).dtype == torch.float64


def test_sense_normal_under_bf16_autocast_runs_in_fp32():
    maps = simulate_coil_maps(12, 10, 2, seed=1).unsqueeze(0)
    mask = cartesian_mask(10, 2, seed=1).view(1, 1, 1, 10)
    x = _randn(1, 2, 12, 10).float()
    A = MultiCoilSense()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = A.normal(x.bfloat16(), mask, maps)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, A.normal(x.bfloat16().float(), mask, maps))


def test_sense_operator_rejects_bad_shapes():
    A = MultiCoilSense()
    maps = torch.zeros(1, 8, 10, 12)
    with pytest.raises(ValueError, match="image must be"):
        A(torch.zeros(1, 2, 10, 11), torch.ones(1, 1, 1, 12), maps)
    with pytest.raises(ValueError, match="mask must be"):
        A(torch.zeros(1, 2, 10, 12), torch.ones(1, 1, 1, 11), maps)


def test_simulated_maps_have_unit_rss_and_vary_with_seed():
    maps = simulate_coil_maps(37, 31, 8, seed=1)
    rss = complex_abs(maps).pow(2).sum(0)
    torch.testing.assert_close(rss, torch.ones_like(rss), atol=1e-5, rtol=0)
    assert not torch.allclose(maps, simulate_coil_maps(37, 31, 8, seed=2))
    torch.testing.assert_close(maps, simulate_coil_maps(37, 31, 8, seed=1))


def test_smooth_phase_is_bounded_and_smooth():
    phase = smooth_phase(64, 48, seed=3, max_phase=np.pi)
    assert float(phase.abs().max()) <= np.pi + 1e-5
    # Smooth: neighbouring pixels differ by a small fraction of the range.
    assert float(phase.diff(dim=0).abs().max()) < 0.5


def test_cg_sense_recovers_image_from_fully_sampled_data():
    height, width, coils = 24, 20, 4
    maps = simulate_coil_maps(height, width, coils, seed=0).unsqueeze(0).double()
    mask = torch.ones(1, 1, 1, width, dtype=torch.float64)
    x = _randn(1, 2, height, width, seed=9)
    A = MultiCoilSense()
    rhs = A.A_adjoint(A(x, mask, maps), mask, maps)
    solved = conjugate_gradient(lambda v: A.normal(v, mask, maps), rhs, n_iter=30)
    torch.testing.assert_close(solved, x, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("method", ["lowres", "espirit"])
def test_estimated_maps_reproduce_the_true_maps_on_the_object(method):
    mask = cartesian_mask(40, 3, center_fraction=0.3, seed=0)
    kspace, maps, inside = _disk_acquisition(48, 40, 6, mask)
    assert _map_error(estimate_coil_maps(kspace, mask, method=method), maps, inside) < 0.05


def _disk_acquisition(height, width, coils, mask):
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    disk = ((yy**2 + xx**2) < 0.6).float()
    image = from_complex(torch.polar(disk * (1.0 + 0.3 * yy), smooth_phase(height, width, seed=1))[None])
    maps = simulate_coil_maps(height, width, coils, seed=3)
    kspace = MultiCoilSense()(image[None], mask.view(1, 1, 1, -1), maps[None])[0]
    return kspace, maps, disk.bool()


def _map_error(estimated, maps, inside):
    """Relative error of estimated maps on the object, after removing their arbitrary common phase."""
    true_z, est_z = to_complex(maps), to_complex(estimated)
    est_z = est_z * torch.exp(1j * torch.angle(torch.sum(torch.conj(est_z) * true_z, dim=0)))
    return float((est_z - true_z).abs()[:, inside].pow(2).sum() / true_z.abs()[:, inside].pow(2).sum())


def test_espirit_refuses_a_calibration_region_narrower_than_twice_its_kernel():
    """A 64-column scan at 8 % ACS has 5 calibration lines: a clear error naming them and the way out."""
    mask = cartesian_mask(64, 4, center_fraction=0.08, seed=0)
    kspace, _, _ = _disk_acquisition(64, 64, 4, mask)
    with pytest.raises(
        ValueError, match=r"at least 12 ACS lines.*has 5 \(of 64 columns\).*lowres.*min_acs_lines"
    ):
        estimate_coil_maps(kspace, mask, method="espirit")


def test_espirit_calibrates_a_small_matrix_from_the_whole_readout_extent():
    """64x64 at R=4 with 12 ACS lines: sigpy's square 12x12 calibration region holds 49 kernel positions
    and gave maps of zeros over the object on real EPI; the 24x12 region here recovers the true maps."""
    mask = cartesian_mask(64, 4, center_fraction=0.08, min_acs_lines=12, seed=0)
    kspace, maps, inside = _disk_acquisition(64, 64, 8, mask)
    estimated = estimate_coil_maps(kspace, mask, method="espirit")
    assert _map_error(estimated, maps, inside) < 0.05


def test_espirit_matches_sigpy_on_a_square_calibration_region():
    """The hand-written ESPIRiT is sigpy's EspiritCalib, step for step, when given the same region."""
    import sigpy.mri

    height, width = 40, 36
    mask = torch.ones(width)
    kspace, _, inside = _disk_acquisition(height, width, 4, mask)
    ksp = to_complex(kspace)
    ours = espirit_maps(
        ksp[:, height // 2 - 6 : height // 2 + 6, width // 2 - 6 : width // 2 + 6], (height, width)
    )
    reference = sigpy.mri.app.EspiritCalib(
        ksp.numpy().astype(np.complex64), calib_width=12, kernel_width=6, thresh=0.02, show_pbar=False
    ).run()
    reference = torch.from_numpy(np.asarray(reference, dtype=np.complex64))
    assert _map_error(from_complex(ours), from_complex(reference), inside) < 1e-3


def test_complex_noise_has_requested_power():
    x = torch.zeros(1, 8, 64, 64)
    noisy = add_complex_noise(x, 0.5, generator=torch.Generator().manual_seed(0))
    power = float(complex_abs(noisy).pow(2).mean())
    assert power == pytest.approx(0.25, rel=0.05)


def test_ffts_leave_bf16_autocast_and_run_in_fp32():
    """Under mixed precision a conv hands the FFT bfloat16; the transform must run in fp32 anyway."""
    x = _randn(2, 4, 13, 11).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        k = fft2c(x.bfloat16())
        back = ifft2c(k)
    assert k.dtype == torch.float32 and back.dtype == torch.float32
    torch.testing.assert_close(k, fft2c(x.bfloat16().float()))
    torch.testing.assert_close(back, x.bfloat16().float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("height", "width", "coils", "kernel"), [(37, 50, 3, 6), (64, 48, 8, 6), (20, 21, 2, 5), (9, 8, 2, 7)]
)
def test_espirit_gram_in_k_space_equals_the_sum_over_kernel_images(height, width, coils, kernel):
    """The k-space form of ESPIRiT's per-pixel Gram matrix against its definition (odd sizes too)."""
    from edgesr.physics.coils import _espirit_gram
    from edgesr.physics.fft import ifft2c_complex

    torch.manual_seed(0)
    kernels = torch.randn(20, coils, kernel, kernel, dtype=torch.complex128) / 10
    scale = (height * width) ** 0.5 / kernel
    expected = torch.zeros(height, width, coils, coils, dtype=torch.complex128)
    for weights in kernels:
        padded = torch.zeros(coils, height, width, dtype=torch.complex128)
        padded[:, 1 : 1 + kernel, :kernel] = (
            weights  # anywhere: a k-space shift is a phase common to every coil
        )
        vector = (ifft2c_complex(padded) * scale).permute(1, 2, 0)
        expected += vector[..., :, None] * vector.conj()[..., None, :]
    gram = _espirit_gram(kernels, height, width)
    assert gram.shape == (height, width, coils, coils)
    torch.testing.assert_close(
        gram.to(torch.complex128), expected, rtol=0, atol=2e-6 * expected.abs().max().item()
    )


@pytest.mark.parametrize("size", [2048, 1000])
def test_the_centered_fft_round_trip_is_exact_at_large_sizes(size):
    """torch 2.13 errs on one complex64 2048x2048 ifft2 with 2 threads on some CPUs; ours does not."""
    from edgesr.physics.fft import fft2c_complex, ifft2c_complex

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        image = torch.randn(size, size, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
        round_trip = ifft2c_complex(fft2c_complex(image))
    finally:
        torch.set_num_threads(threads)
    assert float((round_trip - image).abs().max()) < 1e-4
