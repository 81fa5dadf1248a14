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

from collections.abc import Callable

import torch

State = tuple[torch.Tensor, ...]


def fixed_count_loop(body: Callable[..., State], state: State, count: int) -> State:
    """Applies ``state = body(*state)`` ``count`` times and returns the final state.

    Args:
        body: maps the state tensors to new ones of the same shapes and dtypes. It may read other
            tensors (inputs, parameters) from its closure but must not write to any tensor in place.
        state: the loop-carried tensors.
        count: how many times to apply ``body`` (fixed: it is part of the model, not of the data).

    Raises:
        ValueError: ``count`` is negative or ``state`` is empty.

    Example:
        >>> (x,) = fixed_count_loop(lambda x: (x + denoiser(x),), (x0,), count=10)
    """
    if count < 0:
        raise ValueError(f"count must be >= 0; got {count}")
    if not state:
        raise ValueError("state must hold at least one tensor")
    if not torch.compiler.is_exporting():
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


__all__ = ["fixed_count_loop"]
