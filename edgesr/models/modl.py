"""MoDL: model-based deep learning for multi-coil MRI reconstruction (Aggarwal et al., IEEE TMI 2019).

K unrolled iterations of ``z_k = D_w(x_k)`` (a residual CNN denoiser, weights shared across
iterations) and the data-consistency step ``x_{k+1} = argmin_x ||A x - y||^2 + lam ||x - z_k||^2``,
i.e. ``(A^H A + lam I) x = A^H y + lam z_k``, solved by conjugate gradient (10 steps, differentiable).
``lam`` is learned. ``A`` is the multi-coil SENSE operator of :mod:`edgesr.physics.mri`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgesr.models._blocks import conv3x3, zero_init
from edgesr.models._registry import register_model
from edgesr.physics.fft import channel_pairs_only, from_complex, to_complex
from edgesr.physics.loops import fixed_count_loop
from edgesr.physics.mri import MultiCoilSense, conjugate_gradient


class Denoiser(nn.Module):
    """D_w(x) = x + N_w(x): ``layers`` 3x3 convs (BN + ReLU between) on a complex image ``[B, 2, H, W]``."""

    def __init__(self, features: int, layers: int, batch_norm: bool) -> None:
        super().__init__()
        modules: list[nn.Module] = []
        channels = 2
        for _ in range(layers - 1):
            modules += [
                conv3x3(channels, features, bias=not batch_norm),
                nn.BatchNorm2d(features) if batch_norm else nn.Identity(),
                nn.ReLU(inplace=True),
            ]
            channels = features
        modules.append(zero_init(conv3x3(channels, 2)))  # D_w starts as the identity: MoDL starts as CG-SENSE
        self.net = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class MoDL(nn.Module):
    """MoDL unrolled network.

    Shapes: ``forward(masked_kspace [B, 2C, H, W], mask [B, 1, 1, W], sens_maps [B, 2C, H, W])``
    ``-> image [B, 2, H, W]`` (complex channel pair; its magnitude is the reconstruction).
    """

    task = "recon"
    # Its unrolls and CG steps export as ONNX Loops (edgesr.physics.loops), whose bodies OpenVINO runs
    # at the compiled precision whatever the nodes' marks: see edgesr.export.build.fft_form.
    exports_solver_loops = True
    # The denoiser runs inside the unroll loop: INT8 exports write the unrolls out so that the
    # quantizers reach its convolutions (edgesr.physics.loops.unrolled).
    loops_with_convolutions = ("unrolls",)

    def __init__(
        self,
        *,
        iterations: int = 10,
        features: int = 64,
        layers: int = 5,
        cg_iterations: int = 10,
        lam_init: float = 0.05,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.iterations, self.cg_iterations = iterations, cg_iterations
        self.denoiser = Denoiser(features, layers, batch_norm)
        self.physics = MultiCoilSense()
        # lam = softplus(lam_raw) stays positive, so the CG system stays positive definite.
        self.lam_raw = nn.Parameter(torch.tensor(math.log(math.expm1(lam_init))))

    @property
    def lam(self) -> torch.Tensor:
        return F.softplus(self.lam_raw)

    def forward(
        self, masked_kspace: torch.Tensor, mask: torch.Tensor, sens_maps: torch.Tensor
    ) -> torch.Tensor:
        lam = self.lam
        normal: Callable[[torch.Tensor], torch.Tensor]
        to_solver: Callable[[torch.Tensor], torch.Tensor]
        from_solver: Callable[[torch.Tensor], torch.Tensor]
        if channel_pairs_only():  # exported: no complex tensor in the graph
            to_solver, from_solver = _same, _same
            normal = lambda v: self.physics.normal(v, mask, sens_maps)  # noqa: E731
        else:
            # Eager: the solve stays in torch's complex dtype (a third faster a CG step than converting
            # channel pairs at each one); the denoiser still sees channel pairs. Same result to rounding.
            to_solver, from_solver = _to_solver_complex, from_complex
            maps = _to_solver_complex(sens_maps)
            normal = lambda v: self.physics.normal_complex(v, mask, maps)  # noqa: E731
        rhs0 = to_solver(self.physics.A_adjoint(masked_kspace, mask, sens_maps))

        def unroll(x: torch.Tensor) -> tuple[torch.Tensor]:
            z = to_solver(self.denoiser(from_solver(x)))
            x = conjugate_gradient(
                lambda v: normal(v) + lam * v, rhs0 + lam * z, x0=z, n_iter=self.cg_iterations
            )
            return (x,)

        # A Python loop in eager mode; one ONNX Loop (the denoiser and CG traced once) when exported.
        # (An INT8 export writes the unrolls out, one denoiser each: edgesr.physics.loops.unrolled.)
        (x,) = fixed_count_loop(unroll, (rhs0,), self.iterations, name="unrolls")
        return from_solver(x)


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


def _to_solver_complex(x: torch.Tensor) -> torch.Tensor:
    """Channel pairs as the solver's complex tensor: complex64, or complex128 for float64 (a bf16
    denoiser output under autocast has no complex dtype; the solve runs in full precision anyway)."""
    return to_complex(x if x.dtype == torch.float64 else x.float())


@register_model("recon")
def modl(*, iterations: int = 10, cg_iterations: int = 10) -> MoDL:
    """The paper's MoDL: K=10 unrolls, a 5-layer 64-channel denoiser with BN, 10 CG steps."""
    return MoDL(iterations=iterations, features=64, layers=5, cg_iterations=cg_iterations)


@register_model("recon")
def modl_small(*, iterations: int = 5, cg_iterations: int = 10) -> MoDL:
    """CPU-trainable MoDL: K=5 unrolls, 5-layer 32-channel denoiser without BN (small batches)."""
    return MoDL(iterations=iterations, features=32, layers=5, cg_iterations=cg_iterations, batch_norm=False)


@register_model("recon")
def modl_tiny(*, iterations: int = 2, cg_iterations: int = 3) -> MoDL:
    """For tests: 2 unrolls, 3-layer 8-channel denoiser, 3 CG steps."""
    return MoDL(iterations=iterations, features=8, layers=3, cg_iterations=cg_iterations)
