"""Runs an exported ONNX file with ONNX Runtime as a *predictor*: named input tensors in, output tensor out.

A predictor is any callable ``inputs: Mapping[str, Tensor] -> Tensor`` that the inference pipeline can
run in place of the torch module (which is called as ``module(*[inputs[n] for n in spec.input_names])``).
Pre- and post-processing stay in the pipeline; this class only moves tensors in and out of a session.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from edgesr.errors import DataError


class OnnxRuntimePredictor:
    """An ONNX Runtime CPU session behind the predictor contract.

    Args:
        path: an ONNX file written by :func:`edgesr.export.onnx.export_onnx`.
        threads: intra-op threads (one operator split across cores); 0 lets ONNX Runtime choose
            (one per physical core). Benchmarks pin it so that runtimes are compared like for like.

    Example:
        >>> predictor = OnnxRuntimePredictor("rdn.onnx", threads=2)
        >>> sr = predictor({"lr": lr, "base": base})   # [B, 1, h, w], [B, 1, 2h, 2w] -> [B, 1, 2h, 2w]
    """

    def __init__(self, path: str | Path, *, threads: int = 0) -> None:
        import onnxruntime

        if threads < 0:
            raise ValueError(f"threads must be >= 0 (0: ONNX Runtime's default); got {threads}")
        options = onnxruntime.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        self.path = Path(path)
        # Only the CPU provider: a session that silently picked another device would make CPU
        # benchmarks and verification measure something else.
        self._session = onnxruntime.InferenceSession(
            str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input_names = tuple(node.name for node in self._session.get_inputs())
        self._output_name = self._session.get_outputs()[0].name
        # Symbolic axes are strings (batch, height, width) or None; a fixed-shape export has ints only.
        self.fixed_shapes = {
            node.name: tuple(d if isinstance(d, int) else None for d in node.shape)
            for node in self._session.get_inputs()
        }
        self.fixed_lr_size = fixed_lr_size(self.fixed_shapes)

    @property
    def input_names(self) -> tuple[str, ...]:
        """The graph's input names, in the graph's order (the spec's ``input_names`` for edgesr exports)."""
        return self._input_names

    @functools.cached_property
    def executed_precision(self) -> str:
        """What ONNX Runtime runs the graph's convolutions in (:func:`executed_precision`; computed once,
        on first use: it optimises the graph once more)."""
        return executed_precision(self.path)

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Runs the session on ``inputs`` (by name; extra entries are ignored, as by the torch predictor).

        Args:
            inputs: one tensor per graph input, any device and float dtype, e.g. SR ``lr [B, 1, h, w]``
                and ``base [B, 1, h*s, w*s]``.

        Returns:
            The first graph output as a float32 CPU tensor, e.g. ``sr [B, 1, h*s, w*s]``.

        Raises:
            ValueError: a graph input is missing from ``inputs``.
        """
        feeds = numpy_feeds(inputs, self._input_names, self.fixed_shapes)
        (output,) = self._session.run([self._output_name], feeds)
        return torch.from_numpy(np.ascontiguousarray(output, dtype=np.float32))


Shapes = Mapping[str, tuple[int | None, ...]]


def numpy_feeds(
    inputs: Mapping[str, torch.Tensor], names: tuple[str, ...], fixed_shapes: Shapes | None = None
) -> dict[str, np.ndarray]:
    """The named inputs a runtime session takes, as contiguous float32 CPU arrays (extra entries ignored).

    Args:
        inputs: tensors by name.
        names: the model's input names, in its order.
        fixed_shapes: per input, its dimensions (None where the axis is dynamic), to refuse a tensor
            that a fixed-shape artifact was not built for with a message instead of a runtime's error.

    Raises:
        ValueError: one of ``names`` is missing from ``inputs``.
        DataError: an input has a shape a fixed-shape artifact was not built for.
    """
    missing = [name for name in names if name not in inputs]
    if missing:
        raise ValueError(f"inputs lack {', '.join(map(repr, missing))}; the model takes {', '.join(names)}")
    for name, expected in (fixed_shapes or {}).items():
        if name not in inputs:
            continue
        shape = tuple(inputs[name].shape)
        if len(shape) != len(expected) or any(
            e is not None and e != d for e, d in zip(expected, shape, strict=True)
        ):
            wanted = "x".join("?" if e is None else str(e) for e in expected)
            raise DataError(  # a ValueError too; the CLI reports it without a traceback
                f"input {name!r} has shape {'x'.join(map(str, shape))}; this artifact was exported for "
                f"{wanted} (a fixed-shape export: export again with that size, or use a dynamic target)"
            )
    return {
        name: np.ascontiguousarray(inputs[name].detach().to("cpu", torch.float32).numpy()) for name in names
    }


def fixed_lr_size(shapes: Shapes) -> int | None:
    """The SR input size of a fixed-shape export (its ``lr`` input is square and static), else None."""
    lr = shapes.get("lr")
    if lr is None or len(lr) != 4 or lr[2] is None or lr[2] != lr[3]:
        return None
    return lr[2]


_INTEGER_CONVS = {"QLinearConv", "ConvInteger"}


def executed_precision(path: str | Path) -> str:
    """What ONNX Runtime's CPU provider runs a graph's convolutions in: ``fp32``, ``int8`` or ``int8+fp32``.

    A QDQ file only *asks* for INT8: ONNX Runtime runs a convolution in INT8 when its graph optimiser
    fuses DequantizeLinear -> Conv -> QuantizeLinear into ``QLinearConv``, and in float otherwise. So
    the graph is optimised as a session would optimise it, saved to a temporary file, and counted.
    """
    import tempfile

    import onnx
    import onnxruntime

    with tempfile.TemporaryDirectory() as folder:
        optimized = Path(folder) / "optimized.onnx"
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(optimized)
        options.log_severity_level = 3  # the "hardware-specific optimisations" notice is expected here
        onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        ops = [node.op_type for node in onnx.load(str(optimized)).graph.node]
    integer = sum(op in _INTEGER_CONVS for op in ops)
    floating = sum(op == "Conv" for op in ops)
    return "+".join(["int8"] * bool(integer) + ["fp32"] * bool(floating or not integer))
