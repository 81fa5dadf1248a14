"""Imaging physics: centered FFTs, SR degradations, Cartesian masks, coil maps and the SENSE operator.

Complex data everywhere in edgesr use one layout: real/imaginary parts as interleaved channel pairs,
``[B, 2C, H, W]`` with channel ``2c`` the real and ``2c+1`` the imaginary part of complex channel ``c``
(see :mod:`edgesr.physics.fft`). No complex dtype crosses a module boundary, so every operator exports.
"""

from __future__ import annotations

from edgesr.physics.fft import complex_abs, complex_conj, complex_mul, fft2c, from_complex, ifft2c, to_complex
from edgesr.physics.masks import cartesian_mask
from edgesr.physics.mri import MultiCoilSense, conjugate_gradient

__all__ = [
    "MultiCoilSense",
    "cartesian_mask",
    "complex_abs",
    "complex_conj",
    "complex_mul",
    "conjugate_gradient",
    "fft2c",
    "from_complex",
    "ifft2c",
    "to_complex",
]
