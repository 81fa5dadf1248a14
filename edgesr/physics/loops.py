"""Fixed-count loops that run as Python loops in eager mode and export as one ONNX ``Loop``.

Unrolled reconstruction networks repeat the same computation: MoDL applies one denoiser (weights shared)
and ten conjugate-gradient steps, ten times over. Traced as Python loops, the exported graph holds 100 CG
steps and 10 denoisers, and the dynamo exporter needs minutes for it on 2 cores (DESIGN.md section 5).
:func:`fixed_count_loop` keeps the eager Python loop (autograd, training, and the exact numerics users
already have) and, while ``torch.export`` traces the model, writes the loop as torch's ``while_loop``
higher-order op, which the ONNX exporter turns into a ``Loop`` whose body is traced once. Nested loops
(CG inside the unroll) work the same way.

Written by hand because neither torch nor onnxscript offers "a Python loop in eager, a graph loop when
exporting"; ``torch.compiler.is_exporting`` is the switch torch provides for exactly this.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

State = tuple[torch.Tensor, ...]

# Loops (by name) that an export writes out step by step instead of as an ONNX Loop: see unrolled().
_UNROLLED: frozenset[str] = frozenset()


@contextlib.contextmanager
def unrolled(*names: str) -> Iterator[None]:
    """While exporting inside this block, the loops called ``names`` are traced step by step (their body
    repeated in the graph) rather than as one ``Loop``.

    Why: post-training quantizers (ONNX Runtime's static QDQ quantizer, NNCF) calibrate and quantize
    the nodes of the main graph only, not those inside a ``Loop`` body: MoDL's denoiser, which runs in
    its unroll loop, came out of them in float with the file labelled INT8. An INT8 export therefore
    unrolls the loops whose bodies hold convolutions (MoDL's ``"unrolls"``), and keeps the CG loop
    inside each unroll a ``Loop`` (no convolution in it; unrolling it too is what made exports slow).
    """
    global _UNROLLED
    before = _UNROLLED
    _UNROLLED = before | frozenset(names)
    try:
        yield
    finally:
        _UNROLLED = before


def fixed_count_loop(body: Callable[..., State], state: State, count: int, *, name: str = "") -> State:
    """Applies ``state = body(*state)`` ``count`` times and returns the final state.

    Args:
        body: maps the state tensors to new ones of the same shapes and dtypes. It may read other
            tensors (inputs, parameters) from its closure but must not write to any tensor in place.
        state: the loop-carried tensors.
        count: how many times to apply ``body`` (fixed: it is part of the model, not of the data).
        name: what :func:`unrolled` calls this loop (``"unrolls"``, ``"cg"``).

    Raises:
        ValueError: ``count`` is negative or ``state`` is empty.

    Example:
        >>> (x,) = fixed_count_loop(lambda x: (x + denoiser(x),), (x0,), count=10)
    """
    if count < 0:
        raise ValueError(f"count must be >= 0; got {count}")
    if not state:
        raise ValueError("state must hold at least one tensor")
    if not torch.compiler.is_exporting() or (name and name in _UNROLLED):
        for _ in range(count):
            state = tuple(body(*state))
        return state

    from torch._higher_order_ops import while_loop

    def keep_going(step: torch.Tensor, *_: torch.Tensor) -> torch.Tensor:
        return step < count

    def one_step(step: torch.Tensor, *carried: torch.Tensor) -> State:
        return (step + 1, *body(*carried))

    # The carried tensors are cloned because while_loop refuses a carried input that is also read from
    # the body's closure (an alias), as MoDL's starting image is.
    start = (torch.zeros((), dtype=torch.int64, device=state[0].device), *(t.clone() for t in state))
    _, *final = while_loop(keep_going, one_step, start)
    return tuple(final)


__all__ = ["fixed_count_loop", "unrolled"]
