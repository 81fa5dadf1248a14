"""DeepcomplexMRI (Wang et al., Magnetic Resonance Imaging 2020): complex convolutions on multi-coil images.

The zero-filled coil images ``F^H y`` ``[B, 2C, H, W]`` go through cascaded blocks; each block is a
residual stack of complex 3x3 convolutions with complex ReLU (CReLU: ReLU on real and imaginary parts),
processing all coils jointly as complex channels, followed by a k-space data-consistency layer applied
to every coil: ``k <- k - w * M (k - y)`` with a learned ``w`` in (0, 1) (``w = 1`` is the paper's
hard replacement; ``w < 1`` tolerates noise). At the end the coil images are combined with the coil
sensitivities, ``x = sum_c conj(S_c) x_c``. The paper trains on multi-coil ground-truth images; edgesr's
``loss.coil_weight`` adds that per-coil term (targets ``S_c x``) to the loss on the combined image.

A complex convolution with weight ``W = A + iB`` applied to ``h = x + iy`` is
``W * h = (A*x - B*y) + i (B*x + A*y)``. On the interleaved channel pairs that is one real convolution
whose weight holds the 2x2 blocks ``[[A, -B], [B, A]]`` (see :class:`ComplexConv2d`).
"""

from __future__ import annotations

import torch
from torch import nn

from edgesr.models._registry import register_model
from edgesr.physics.fft import complex_conj, complex_mul, fft2c, ifft2c


def _interleave(real: torch.Tensor, imag: torch.Tensor, dim: int) -> torch.Tensor:
    """``real`` and ``imag`` alternating along ``dim`` (entries ``2k`` and ``2k + 1``)."""
    return torch.stack([real, imag], dim=dim + 1).flatten(dim, dim + 1)


class ComplexConv2d(nn.Module):
    """Complex 3x3 convolution on interleaved channel pairs: ``[B, 2*cin, H, W] -> [B, 2*cout, H, W]``.

    Weights start from the complex He initialisation the DeepcomplexMRI authors use (and Trabelsi et
    al. 2018 derive): Rayleigh-distributed magnitude with scale ``1/sqrt(fan_in)`` and uniform phase, so
    a stack of CReLU layers keeps the signal's variance. torch's default real init shrinks it about
    2x per complex layer (measured). On the 4-layer CPU preset both inits trained alike (an A/B to
    step 250); the paper's deeper blocks without batch norm are where it matters.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.real = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.imag = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bias = nn.Parameter(torch.zeros(2 * out_channels))  # a complex bias, interleaved like the data
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        shape = self.real.weight.shape
        scale = (shape[1] * shape[2] * shape[3]) ** -0.5
        uniform = torch.rand(shape).clamp_min(torch.finfo(torch.float32).tiny)
        magnitude = scale * torch.sqrt(-2.0 * torch.log(uniform))  # Rayleigh(scale) by inversion
        phase = (2.0 * torch.rand(shape) - 1.0) * torch.pi
        self.real.weight.copy_(magnitude * torch.cos(phase))
        self.imag.weight.copy_(magnitude * torch.sin(phase))
        self.bias.zero_()

    def pair_weight(self) -> torch.Tensor:
        """The real ``[2*cout, 2*cin, 3, 3]`` weight that does the complex convolution on interleaved pairs.

        Output pair ``o`` from input pair ``i`` is the block ``[[A, -B], [B, A]]`` (``A = real``, ``B =
        imag``): the real output row takes ``A x - B y``, the imaginary one ``B x + A y``.
        """
        real, imag = self.real.weight, self.imag.weight
        real_rows = _interleave(real, -imag, dim=1)  # [cout, 2*cin, 3, 3]
        imag_rows = _interleave(imag, real, dim=1)
        return _interleave(real_rows, imag_rows, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One convolution over all 2*cin channels rather than four on strided halves: the same MACs,
        # no strided copies or re-interleaving, and wider layers for the CPU's matrix units (1.4-1.5x
        # faster in torch on 2 cores, measured on deepcomplex and deepcomplex_small). The parameters
        # (and so checkpoints and pruning) stay the two real convs and the interleaved bias.
        weight = self.pair_weight()
        if _channels_last(self.real.weight):
            # A channels-last copy (TorchPredictor's on the CPU): the weight built here follows, and so
            # does the input, which arrives contiguous from the FFTs; deepcomplex-r4 2755 -> 1841 ms
            # at 256x256 with 8 coils on 2 threads, the same output to 1e-6.
            weight = weight.contiguous(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        return nn.functional.conv2d(x, weight, self.bias, padding=self.real.padding)


def _channels_last(weight: torch.Tensor) -> bool:
    """Whether a 4-D weight is laid out channels-last (and not also plain contiguous, as some shapes are)."""
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


class ComplexBlock(nn.Module):
    """``layers`` complex convs with CReLU between them, residual over the coil images."""

    def __init__(self, coils: int, features: int, layers: int) -> None:
        super().__init__()
        modules: list[nn.Module] = []
        channels = coils
        for _ in range(layers - 1):
            modules += [ComplexConv2d(channels, features), nn.ReLU(inplace=True)]
            channels = features
        last = ComplexConv2d(channels, coils)
        nn.init.zeros_(last.real.weight)  # each block starts as the identity (zero-filled + data consistency)
        nn.init.zeros_(last.imag.weight)
        modules.append(last)
        self.net = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class KSpaceDataConsistency(nn.Module):
    """``k <- k - w M (k - y)`` on every coil, with ``w = sigmoid(raw)`` learned."""

    def __init__(self, init: float = 2.0) -> None:
        super().__init__()
        self.raw = nn.Parameter(torch.tensor(init))

    def forward(
        self, coil_images: torch.Tensor, masked_kspace: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        kspace = fft2c(coil_images)
        kspace = kspace - torch.sigmoid(self.raw) * mask * (kspace - masked_kspace)
        return ifft2c(kspace)


class DeepComplexMRI(nn.Module):
    """Cascaded complex-valued residual blocks with k-space data consistency.

    Shapes: ``forward(masked_kspace [B, 2C, H, W], mask [B, 1, 1, W], sens_maps [B, 2C, H, W])``
    ``-> image [B, 2, H, W]``. ``C`` must equal ``coils``; compress more coils to ``coils`` virtual
    coils first.
    """

    task = "recon"

    def __init__(self, *, coils: int = 8, blocks: int = 10, features: int = 64, layers: int = 5) -> None:
        super().__init__()
        self.coils = coils
        self.blocks = nn.ModuleList(ComplexBlock(coils, features, layers) for _ in range(blocks))
        self.consistency = nn.ModuleList(KSpaceDataConsistency() for _ in range(blocks))

    def forward(
        self,
        masked_kspace: torch.Tensor,
        mask: torch.Tensor,
        sens_maps: torch.Tensor,
        return_coil_images: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The combined image; with ``return_coil_images`` also the coil images ``[B, 2C, H, W]``
        (training supervises them as the paper does; export and inference use the default)."""
        if masked_kspace.dim() != 4 or masked_kspace.shape[1] != 2 * self.coils:
            raise ValueError(
                f"masked_kspace must be [B, {2 * self.coils}, H, W] for {self.coils} coils; "
                f"got shape {tuple(masked_kspace.shape)}"
            )
        x = ifft2c(masked_kspace * mask)
        for block, consistency in zip(self.blocks, self.consistency, strict=True):
            x = consistency(block(x), masked_kspace, mask)
        combined = complex_mul(complex_conj(sens_maps), x).unflatten(1, (-1, 2)).sum(dim=1)
        return (combined, x) if return_coil_images else combined


@register_model("recon")
def deepcomplex(*, coils: int = 8, blocks: int = 10) -> DeepComplexMRI:
    """The paper-size network: 10 blocks of 5 complex conv layers with 64 complex channels.

    ``blocks`` is the number of cascades (a complex block, then k-space data consistency): a student
    of fewer cascades starts from the teacher's first ones (``student_init: teacher``).
    """
    return DeepComplexMRI(coils=coils, blocks=blocks, features=64, layers=5)


@register_model("recon")
def deepcomplex_small(*, coils: int = 8, blocks: int = 5) -> DeepComplexMRI:
    """CPU-trainable: 5 blocks of 4 complex conv layers with 32 complex channels."""
    return DeepComplexMRI(coils=coils, blocks=blocks, features=32, layers=4)


@register_model("recon")
def deepcomplex_tiny(*, coils: int = 4, blocks: int = 2) -> DeepComplexMRI:
    """For tests: 2 blocks of 2 complex conv layers with 4 complex channels."""
    return DeepComplexMRI(coils=coils, blocks=blocks, features=4, layers=2)
