"""TensorRT engines: built from the export's ONNX with the ``tensorrt`` Python API, run as a predictor.

A TensorRT engine (``model.plan``) is compiled for one GPU model and one TensorRT version: it is not
portable, so ``edgesr export target=jetson-orin`` writes the ONNX here and builds the engine when the
same command runs on the Jetson, with the JetPack TensorRT it finds (the profile's ``build_on_device``).

What this machine can and cannot check. The ``tensorrt`` wheel cannot be installed here (PyPI's
``tensorrt-cu13`` is a placeholder that downloads from NVIDIA's index at install time) and the GPU
machine used for CUDA checks has none either. So :func:`build_engine` and :class:`TensorRTPredictor`
are the real code paths, written against the TensorRT 10 API (explicit batch, named I/O tensors,
``execute_async_v3``), and their tests skip with the reason where ``tensorrt`` does not import. What
*is* verified everywhere is the ONNX the engine is built from: fixed shapes, the FFTs as matrix
products (TensorRT before 11.2 has no DFT layer), and for INT8 a symmetric QDQ graph (TensorRT's explicit
quantization takes only zero points of 0), run in ONNX Runtime as the closest proxy.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

PLAN_FILE = "model.plan"


def tensorrt_missing() -> str | None:
    """Why a TensorRT engine cannot be built or run here, or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return f"the tensorrt Python package does not import ({exc})"
    if not torch.cuda.is_available():
        return "no CUDA device is visible to torch"
    return None


def on_jetson() -> bool:
    """True on an NVIDIA Jetson (L4T): where a ``build_on_device`` target's engine may be built."""
    return platform.machine() == "aarch64" and Path("/etc/nv_tegra_release").is_file()


def build_engine(
    onnx_path: Path, plan_path: Path, *, precision: str, workspace_gb: float = 4.0
) -> dict[str, Any]:
    """Builds a serialized engine for ``onnx_path`` at ``precision`` and writes it to ``plan_path``.

    ``fp16`` lets TensorRT pick FP16 kernels for the FP32 graph; ``int8`` expects a QDQ graph (explicit
    quantization: the scales are the graph's, no calibrator runs here) and allows FP16 for the layers
    left in float. Returns what was built: TensorRT version, device name, precision flags.

    Raises:
        RuntimeError: TensorRT is missing, the ONNX parser rejects a node (its messages are kept), or
            the builder fails.
    """
    reason = tensorrt_missing()
    if reason is not None:
        raise RuntimeError(f"cannot build a TensorRT engine: {reason}")
    import tensorrt as trt

    from edgesr._io import atomic_path

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    flags = []
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
        flags.append("FP16")
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        flags.append("INT8")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build an engine from {onnx_path} at {precision}")
    with atomic_path(plan_path) as tmp:
        Path(tmp).write_bytes(bytes(serialized))
    return {
        "tensorrt": trt.__version__,
        "device": torch.cuda.get_device_name(),
        "flags": flags,
        "workspace_gb": workspace_gb,
    }


class TensorRTPredictor:
    """A deserialized TensorRT engine behind the predictor contract (inputs by name, first output).

    The engine's I/O tensors are bound to torch CUDA tensors; one execution context per predictor, so
    use one predictor per thread.

    Args:
        path: a ``model.plan`` written by :func:`build_engine` on this GPU and TensorRT version.
        precision: the precision it was built for (recorded as what the engine was allowed to run).

    Raises:
        RuntimeError: TensorRT or CUDA is missing, or the plan was built by another TensorRT or GPU.
    """

    def __init__(self, path: str | Path, *, precision: str = "fp32") -> None:
        reason = tensorrt_missing()
        if reason is not None:
            raise RuntimeError(f"cannot run a TensorRT engine: {reason}")
        import tensorrt as trt

        self.path = Path(path)
        self._trt = trt
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise RuntimeError(f"{self.path}: TensorRT cannot load it (built by another TensorRT or GPU?)")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._input_names = tuple(
            n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
        )
        self._output_name = next(
            n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT
        )
        self.fixed_shapes = {
            name: tuple(d if d >= 0 else None for d in self._engine.get_tensor_shape(name))
            for name in self._input_names
        }
        from edgesr.export.onnxruntime import fixed_lr_size

        self.fixed_lr_size = fixed_lr_size(self.fixed_shapes)
        # TensorRT picks each layer's precision within the build's flags; the engine does not say which.
        self.executed_precision = f"{precision} (allowed; TensorRT picks per layer)"

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._input_names

    @torch.no_grad()
    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        from edgesr.export.onnxruntime import numpy_feeds

        numpy_feeds(inputs, self._input_names, self.fixed_shapes)  # names and shapes checked, as elsewhere
        device = torch.device("cuda")
        feeds = {n: inputs[n].to(device, torch.float32).contiguous() for n in self._input_names}
        for name, tensor in feeds.items():
            self._context.set_input_shape(name, tuple(tensor.shape))
            self._context.set_tensor_address(name, tensor.data_ptr())
        shape = tuple(self._context.get_tensor_shape(self._output_name))
        output = torch.empty(shape, dtype=torch.float32, device=device)
        self._context.set_tensor_address(self._output_name, output.data_ptr())
        stream = torch.cuda.current_stream()
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"{self.path}: TensorRT execution failed")
        stream.synchronize()
        return output.cpu()


__all__ = ["PLAN_FILE", "TensorRTPredictor", "build_engine", "on_jetson", "tensorrt_missing"]
