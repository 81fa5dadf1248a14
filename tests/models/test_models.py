from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgesr.errors import ConfigError
from edgesr.models import create_model, list_models, model_task, register_model
from edgesr.models.deepcomplex import ComplexConv2d
from edgesr.models.srgan import Discriminator
from edgesr.physics.coils import simulate_coil_maps
from edgesr.physics.fft import from_complex, ifft2c, to_complex
from edgesr.physics.masks import cartesian_mask


def _recon_inputs(coils: int, height: int = 13, width: int = 11, batch: int = 2):
    generator = torch.Generator().manual_seed(0)
    kspace = torch.randn(batch, 2 * coils, height, width, generator=generator)
    mask = (
        cartesian_mask(width, 2, center_fraction=0.3, seed=0).view(1, 1, 1, width).expand(batch, -1, -1, -1)
    )
    maps = simulate_coil_maps(height, width, coils, seed=1).expand(batch, -1, -1, -1)
    return kspace * mask, mask, maps


@pytest.mark.parametrize("name", list_models())
def test_forward_and_backward_on_odd_sizes(name):
    torch.manual_seed(0)
    if model_task(name) == "sr":
        scale = 3
        model = create_model(name, scale=scale)
        lr = torch.rand(2, 1, 9, 7)
        base = F.interpolate(lr, scale_factor=scale, mode="bicubic")
        out = model(lr, base)
        assert out.shape == (2, 1, 27, 21)
    else:
        options = {"iterations": 2} if name.startswith("modl") else {}
        model = create_model(name, **options)
        coils = getattr(model, "coils", 4)
        out = model(*_recon_inputs(coils))
        assert out.shape == (2, 2, 13, 11)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.parametrize("name", [n for n in list_models() if model_task(n) == "recon"])
def test_recon_models_run_under_bf16_autocast(name):
    """Training under bf16 autocast (CUDA, a CPU with bf16 units): convolutions go bf16, FFT and data
    consistency stay fp32."""
    torch.manual_seed(0)
    options = {"iterations": 2} if name.startswith("modl") else {}
    model = create_model(name, **options).eval()
    inputs = _recon_inputs(getattr(model, "coils", 4))
    with torch.no_grad():
        reference = model(*inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(*inputs)
    assert mixed.dtype == torch.float32
    error = (mixed - reference).norm() / reference.norm()
    assert float(error) < 0.05, f"bf16 autocast moved the output by {float(error):.3f} (relative)"


@pytest.mark.parametrize("scale", [2, 4])
def test_sr_models_check_their_inputs(scale):
    model = create_model("rdn_tiny", scale=scale)
    with pytest.raises(ValueError, match="base must be"):
        model(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"lr must be \[B, 1, h, w\]"):
        model(torch.rand(1, 2, 8, 8), torch.rand(1, 2, 8 * scale, 8 * scale))


def test_deepcomplex_rejects_wrong_coil_count():
    model = create_model("deepcomplex_tiny", coils=4)
    with pytest.raises(ValueError, match="for 4 coils"):
        model(*_recon_inputs(6))


def test_a_deepcomplex_student_of_fewer_cascades_starts_from_the_teachers_first_ones():
    """``blocks`` (cascades of a complex block and data consistency) is a student option; a student
    of fewer starts from the teacher's first cascades, which is also how the teacher begins."""
    from edgesr.compress.runner import Candidate, _init_from

    teacher = create_model("deepcomplex_tiny", coils=4, blocks=3).eval()
    for parameter in teacher.parameters():  # not the identity-initialised start
        torch.nn.init.normal_(parameter, std=0.1)
    student = create_model("deepcomplex_tiny", coils=4, blocks=1).eval()
    assert len(student.blocks) == len(student.consistency) == 1
    shared, total = _init_from(student, Candidate("teacher", teacher, "deepcomplex_tiny", {}, None, None))  # type: ignore[arg-type]
    assert shared == total
    kspace, mask, maps = _recon_inputs(4)
    x = ifft2c(kspace * mask)
    with torch.no_grad():
        first = teacher.consistency[0](teacher.blocks[0](x), kspace, mask)
        expected = from_complex((to_complex(first) * to_complex(maps).conj()).sum(dim=1, keepdim=True))
        torch.testing.assert_close(student(kspace, mask, maps), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="blocks"):
        create_model("deepcomplex_tiny", blocks=0)


def test_deepcomplex_coil_images_combine_to_its_output():
    model = create_model("deepcomplex_tiny", coils=4).eval()
    kspace, mask, maps = _recon_inputs(4)
    combined, coil_images = model(kspace, mask, maps, return_coil_images=True)
    assert coil_images.shape == kspace.shape
    expected = (to_complex(coil_images) * to_complex(maps).conj()).sum(dim=1, keepdim=True)
    torch.testing.assert_close(combined, from_complex(expected), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(kspace, mask, maps), combined)


def test_complex_conv_follows_the_complex_product_rule():
    conv = ComplexConv2d(3, 2)
    x = torch.randn(1, 6, 5, 4)
    weight = torch.complex(conv.real.weight, conv.imag.weight)
    z = to_complex(x)
    expected = torch.complex(
        F.conv2d(z.real, weight.real, padding=1) - F.conv2d(z.imag, weight.imag, padding=1),
        F.conv2d(z.real, weight.imag, padding=1) + F.conv2d(z.imag, weight.real, padding=1),
    )
    with torch.no_grad():
        conv.bias.copy_(torch.randn(4))
    bias = torch.complex(conv.bias[0::2], conv.bias[1::2]).view(1, -1, 1, 1)
    torch.testing.assert_close(conv(x), from_complex(expected + bias), atol=1e-5, rtol=1e-5)


def test_modl_with_zero_denoiser_residual_is_cg_sense():
    """With N_w = 0 the denoiser is the identity, so MoDL iterates CG-SENSE with Tikhonov weight lam."""
    model = create_model("modl_tiny", iterations=3, cg_iterations=20)
    torch.nn.init.zeros_(model.denoiser.net[-1].weight)
    torch.nn.init.zeros_(model.denoiser.net[-1].bias)
    kspace, mask, maps = _recon_inputs(4, batch=1)
    with torch.no_grad():
        out = model(kspace, mask, maps)
        # Fixed point of x = argmin ||Ax - y||^2 + lam ||x - x||^2 over iterations is the least-squares
        # solution: the residual of the normal equations must shrink towards 0.
        normal = model.physics.normal(out, mask, maps)
        rhs = model.physics.A_adjoint(kspace, mask, maps)
        first = model.physics.A_adjoint(kspace, mask, maps)
        assert float((normal - rhs).norm()) < 0.2 * float(
            (model.physics.normal(first, mask, maps) - rhs).norm()
        )


def test_modl_solves_in_complex_dtype_eagerly_as_it_does_on_channel_pairs_when_exported():
    """Eager MoDL keeps its CG solve in torch's complex dtype; exports stay on channel pairs (forced here
    by the DFT-as-matmul form). Both must give the same image, and gradients must flow through both."""
    from edgesr.physics.fft import dft_as_matmul

    model = create_model("modl_tiny", iterations=2, cg_iterations=4).double()
    torch.nn.init.normal_(model.denoiser.net[-1].weight, std=0.05)  # a denoiser that does something
    kspace, mask, maps = (t.double() for t in _recon_inputs(4, batch=2))
    gradients = {}
    for form in ("complex", "pairs"):
        model.zero_grad()
        with dft_as_matmul(form == "pairs"):
            output = model(kspace, mask, maps)
        output.square().mean().backward()
        gradients[form] = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        gradients[form]["output"] = output.detach()
    assert gradients["complex"].keys() == gradients["pairs"].keys() and "lam_raw" in gradients["pairs"]
    for name, expected in gradients["pairs"].items():
        torch.testing.assert_close(gradients["complex"][name], expected, msg=name)


def test_cg_sense_baseline_in_complex_dtype_matches_channel_pairs():
    from edgesr.baselines import CG_SENSE_LAMBDA, recon_cg_sense
    from edgesr.physics.mri import MultiCoilSense, conjugate_gradient

    kspace, mask, maps = _recon_inputs(4, batch=1)
    op = MultiCoilSense()
    rhs = op.A_adjoint(kspace, mask, maps)
    pairs = conjugate_gradient(
        lambda x: op.A_adjoint(op.A(x, mask, maps), mask, maps) + CG_SENSE_LAMBDA * x,
        rhs,
        n_iter=10,
        tol=1e-6,
    )
    torch.testing.assert_close(recon_cg_sense(kspace, mask, maps, n_iter=10), pairs, atol=1e-5, rtol=1e-4)


def test_complex_convs_of_a_channels_last_copy_give_the_same_reconstruction():
    """TorchPredictor's CPU copy is channels-last; the complex convolutions, which build their weights
    at run time, follow it (and must not change the result)."""
    from edgesr.pipeline import TorchPredictor
    from edgesr.spec import recon_spec

    torch.manual_seed(0)
    model = create_model("deepcomplex_tiny")
    for conv in model.modules():
        if isinstance(conv, ComplexConv2d):
            torch.nn.init.normal_(conv.real.weight, std=0.1)  # the last conv of each block starts at zero
    kspace, mask, maps = _recon_inputs(4, batch=1)
    inputs = {"masked_kspace": kspace, "mask": mask, "sens_maps": maps}
    spec = recon_spec(coils=4)
    fast = TorchPredictor(model, spec, "cpu")
    conv = next(m for m in fast.module.modules() if isinstance(m, ComplexConv2d))
    assert conv.real.weight.is_contiguous(memory_format=torch.channels_last)
    plain = TorchPredictor(model, spec, "cpu", channels_last=False)
    torch.testing.assert_close(fast(inputs), plain(inputs), atol=1e-5, rtol=1e-5)


def test_discriminator_accepts_any_patch_size():
    for norm in ("batch", "none"):
        disc = Discriminator(features=8, norm=norm)
        assert disc(torch.rand(2, 1, 40, 36)).shape == (2, 1)


def test_registry_is_strict():
    with pytest.raises(ConfigError, match="did you mean 'rdn_small'"):
        create_model("rdn_smal")
    with pytest.raises(ConfigError, match="has no option 'scael'; did you mean 'scale'"):
        create_model("rdn_tiny", scael=2)
    # Values are checked against the builder's annotations; every integer option is a count or a size.
    with pytest.raises(ConfigError, match="option iterations='abc' must be of type int"):
        create_model("modl_tiny", iterations="abc")
    with pytest.raises(ConfigError, match="option cg_iterations=0 must be at least 1"):
        create_model("modl_tiny", cg_iterations=0)
    with pytest.raises(ConfigError, match="option iterations=True must be of type int"):
        create_model("modl_tiny", iterations=True)
    with pytest.raises(ConfigError, match="option batch_norm=1 must be of type bool"):
        create_model("srgan_tiny", batch_norm=1)
    assert create_model("modl_tiny", iterations=3).iterations == 3

    def rdn_tiny():  # the name of an existing builder
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="registered twice"):
        register_model("sr")(rdn_tiny)


def test_complex_conv_init_keeps_the_signal_through_a_crelu_stack():
    """Complex He (Rayleigh magnitude, uniform phase): four CReLU layers keep the scale (not ~1/16)."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 24, 24)
    h = x
    with torch.no_grad():
        for cin, cout in [(8, 32), (32, 32), (32, 32), (32, 32)]:
            h = torch.relu(ComplexConv2d(cin, cout)(h))
    assert 0.4 < float(h.std()) / float(x.std()) < 1.5
    conv = ComplexConv2d(32, 32)
    weight = torch.complex(conv.real.weight, conv.imag.weight).detach()
    assert float(weight.abs().square().mean()) == pytest.approx(2 / (32 * 9), rel=0.1)  # E|W|^2 = 2 / fan_in
