"""Runs an ONNX file or an OpenVINO model (IR, or an INT8 model from NNCF) as a *predictor*.

OpenVINO picks the execution precision itself: on a CPU with AMX it runs a float32 model in BF16
unless told otherwise (``INFERENCE_PRECISION_HINT``), and an INT8 model runs its quantized layers in
INT8 and the rest in that same default. A benchmark that says "OpenVINO FP32" without checking has
measured BF16. So the predictor takes the precision as an explicit choice (``"default"`` keeps
OpenVINO's) and reports what the compiled model executed (:attr:`OpenVinoPredictor.executed_precision`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

# The float precisions a caller may ask for; "default" leaves OpenVINO's own choice (BF16 on AMX CPUs).
PRECISIONS = ("default", "f32", "bf16", "f16")


class OpenVinoPredictor:
    """An OpenVINO CPU compiled model behind the predictor contract.

    Args:
        model: an ``.onnx`` or ``.xml`` file, or an ``openvino.Model`` (e.g. NNCF's quantized model).
        threads: CPU inference threads; 0 lets OpenVINO choose. Benchmarks pin it.
        precision: the float precision of layers that are not quantized: ``"default"`` (OpenVINO's
            choice for this CPU), ``"f32"``, ``"bf16"`` or ``"f16"``.

    Example:
        >>> predictor = OpenVinoPredictor("rdn.onnx", threads=2, precision="f32")
        >>> sr = predictor({"lr": lr, "base": base})
        >>> predictor.executed_precision        # what the compiled model ran: "fp32", "bf16", "int8+bf16"
    """

    def __init__(self, model: Any, *, threads: int = 0, precision: str = "default") -> None:
        import openvino

        if threads < 0:
            raise ValueError(f"threads must be >= 0 (0: OpenVINO's default); got {threads}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        core = openvino.Core()
        if isinstance(model, (str, Path)):
            self.path: Path | None = Path(model)
            model = core.read_model(str(model))
        else:
            self.path = None
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        if precision != "default":
            config["INFERENCE_PRECISION_HINT"] = precision
        self._compiled = core.compile_model(model, "CPU", config)
        self._request = self._compiled.create_infer_request()
        self._input_names = tuple(port.get_any_name() for port in self._compiled.inputs)
        self.executed_precision = executed_precision(self._compiled)

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._input_names

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Runs the compiled model on ``inputs`` (by name; extra entries are ignored).

        Args:
            inputs: one tensor per model input, e.g. SR ``lr [B, 1, h, w]`` and ``base [B, 1, h*s, w*s]``.

        Returns:
            The first output as a float32 CPU tensor.

        Raises:
            ValueError: a model input is missing from ``inputs``.
        """
        from edgesr.export.onnxruntime import numpy_feeds  # the one conversion both runtimes share

        result = self._request.infer(numpy_feeds(inputs, self._input_names))
        output = result[self._compiled.outputs[0]]
        return torch.from_numpy(np.array(output, dtype=np.float32, copy=True))


# Precision names as reports use them -> OpenVINO's inference precision hint. An INT8 file carries its
# own precision in its FakeQuantize nodes; the rest of it runs at the device default (BF16 here).
_HINTS = {"default": "default", "int8": "default", "fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def precision_hint(precision: str) -> str:
    """The :class:`OpenVinoPredictor` ``precision`` that runs a model at a report's ``precision``."""
    if precision not in _HINTS:
        raise ValueError(f"precision must be one of {', '.join(_HINTS)}; got {precision!r}")
    return _HINTS[precision]


def executed_precision(compiled: Any) -> str:
    """What a compiled CPU model runs its convolutions in: ``fp32``, ``bf16``, ``fp16``, ``int8+bf16``...

    Read from the runtime graph (each executed node's ``runtimePrecision``), not from the request: this
    is the precision the plugin chose after fusing quantize/dequantize pairs into its kernels.
    """
    found: set[str] = set()
    for node in compiled.get_runtime_model().get_ordered_ops():
        info = node.get_rt_info()
        if "layerType" not in info or info["layerType"].astype(str) not in ("Convolution", "Deconvolution"):
            continue
        found.add(_short_precision(info["runtimePrecision"].astype(str)))
    if not found:  # a graph without convolutions: report the plugin's float choice
        return _short_precision(str(compiled.get_property("INFERENCE_PRECISION_HINT")))
    integer = sorted(p for p in found if p.startswith(("int", "uint")))
    floats = sorted(p for p in found if p not in integer)
    return "+".join(["int8"] * bool(integer) + floats)


def _short_precision(name: str) -> str:
    name = name.lower().replace("<type: '", "").replace("'>", "")
    aliases = {"f32": "fp32", "float32": "fp32", "bfloat16": "bf16", "f16": "fp16", "float16": "fp16"}
    return aliases.get(name, "int8" if name in ("i8", "u8", "int8", "uint8") else name)
