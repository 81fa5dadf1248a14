"""fixed_count_loop: a Python loop in eager mode, torch's while_loop while torch.export traces."""

from __future__ import annotations

import pytest
import torch

from edgesr.physics.loops import fixed_count_loop


def _body(x: torch.Tensor, total: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = 0.5 * x + 1.0
    return x, total + x.sum()


def test_eager_runs_the_body_count_times() -> None:
    x0, total0 = torch.tensor([4.0, -2.0]), torch.tensor(0.0)
    x, total = fixed_count_loop(_body, (x0, total0), 3)
    expected_x, expected_total = x0, total0
    for _ in range(3):
        expected_x, expected_total = _body(expected_x, expected_total)
    assert torch.equal(x, expected_x) and torch.equal(total, expected_total)
    assert fixed_count_loop(_body, (x0, total0), 0) == (x0, total0)


def test_bad_counts_and_empty_states_are_refused() -> None:
    with pytest.raises(ValueError, match="count must be >= 0; got -1"):
        fixed_count_loop(_body, (torch.zeros(1), torch.zeros(())), -1)
    with pytest.raises(ValueError, match="state must hold at least one tensor"):
        fixed_count_loop(_body, (), 2)


class _Nested(torch.nn.Module):
    """An outer loop whose body runs an inner loop and reads a parameter and an input from its closure."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(0.9))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = x.mean()

        def inner(y: torch.Tensor) -> tuple[torch.Tensor]:
            return (self.weight * y + offset,)

        def outer(y: torch.Tensor) -> tuple[torch.Tensor]:
            return fixed_count_loop(inner, (y,), 3)

        (x,) = fixed_count_loop(outer, (x,), 4)
        return x


def test_an_exported_loop_is_traced_once_and_computes_what_eager_does() -> None:
    model, x = _Nested().eval(), torch.randn(2, 5)
    with torch.no_grad():
        program = torch.export.export(model, (x,), strict=False)
        other = torch.randn(2, 5)
        torch.testing.assert_close(program.module()(other), model(other))
    loops = [n for n in program.graph.nodes if n.target is torch.ops.higher_order.while_loop]
    assert len(loops) == 1, "the outer loop is one node, not four copies of its body"
