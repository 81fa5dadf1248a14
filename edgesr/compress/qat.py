"""Quantization-aware training (QAT) with distillation: the last INT8 remedy when PTQ misses the gate.

1. NNCF inserts fake quantizers into a copy of the float torch model, on the same convolutions that
   post-training quantization quantizes (the :class:`~edgesr.compress.quantize.Scope` resolved on the
   ONNX graph is mapped back to torch modules), with ranges calibrated on the same pipeline inputs.
2. The fake-quantized model is fine-tuned through :func:`edgesr.compress.distill.distill` (the one
   training loop: checkpoints, resumption, validation) towards the float model's output and the ground
   truth, so its weights and quantizer scales learn to live with 8-bit steps.
3. It becomes each runtime's INT8 file: OpenVINO converts the NNCF model itself (its fake quantizers
   become ``FakeQuantize`` and the convolutions run in INT8); for ONNX Runtime / TensorRT, NNCF strips
   its quantizers to torch's native fake-quantize modules, which torch's TorchScript ONNX exporter
   writes as standard ``QuantizeLinear``/``DequantizeLinear`` pairs (the dynamo exporter cannot trace
   those modules; recon models, whose FFTs only the dynamo exporter handles, get no ONNX Runtime QAT
   file, and the attempt says so).

Every file is checked against the fake-quantized torch model on a calibration input, and the largest
difference is recorded with the attempt. The fine-tuning runs on the CPU, in one process (NNCF's CPU
quantizer kernels are compiled on first use, which needs a C++ compiler).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from edgesr._io import atomic_path
from edgesr.compress.distill import DistillSettings, distill
from edgesr.data.dataset import PreparedDataset
from edgesr.errors import ConfigError, EdgesrError
from edgesr.spec import ModelSpec
from edgesr.train.checkpoint import checkpoint_exists, load_weights, read_metadata
from edgesr.train.distributed import DistEnv
from edgesr.train.fit import discard_run_without_checkpoint

# NNCF compiles its CPU quantizer kernels on first use and gives up after 60 s by default; on two busy
# cores the build takes longer than that. A user's own setting wins.
os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "900")


class QatUnavailable(Exception):
    """QAT cannot produce a file here (NNCF cannot wrap the network, or a converter refuses it)."""


def torch_inputs(spec: ModelSpec, item: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    """One recorded calibration item as the network's positional inputs (the spec's order)."""
    missing = [name for name in spec.input_names if name not in item]
    if missing:
        raise ValueError(f"calibration item lacks {', '.join(missing)}; the model takes {spec.input_names}")
    return tuple(torch.from_numpy(np.ascontiguousarray(item[name])) for name in spec.input_names)


def kept_modules(model: nn.Module, onnx_graph: Any, kept_nodes: Sequence[str]) -> set[str]:
    """The torch ``Conv2d`` modules behind the ONNX ``Conv`` nodes a scope keeps in float.

    A dynamo export records, per node, the module names it was traced in (outermost first); the
    innermost one that is a ``Conv2d`` of ``model`` is the node's layer.
    """
    from edgesr.compress.quantize import module_path
    from edgesr.models.deepcomplex import ComplexConv2d

    # A complex conv is one ONNX Conv traced in the ComplexConv2d itself (its weight is computed).
    convs = {name for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, ComplexConv2d))}
    wanted = set(kept_nodes)
    found: set[str] = set()
    for node in onnx_graph.graph.node:
        if node.name not in wanted:
            continue
        owners = [m for m in module_path(node) if m in convs]
        if not owners:
            raise ConfigError(f"quantize: the ONNX node {node.name} maps to no Conv2d of the model")
        found.add(owners[-1])
    return found


def _conv_nodes(graph: Any) -> dict[str, str]:
    """NNCF's graph node name of each convolution -> the torch module that owns its weight.

    NNCF names nodes after the call path, which for layers called from loops is not the module name;
    the weight tensor's name (``blocks.0.layers.1.weight``) is, so the mapping goes through it.
    """
    from nncf.common.graph.layer_attributes import ConstantLayerAttributes
    from nncf.torch.model_graph_manager import get_const_node, split_const_name

    result = {}
    for node in graph.get_nodes_by_types(["conv2d"]):
        const = get_const_node(node, 1, graph)
        if const is None or not isinstance(const.layer_attributes, ConstantLayerAttributes):
            continue  # a convolution with a computed weight: nothing to quantize per channel
        module, _ = split_const_name(const.layer_attributes.name)
        result[node.node_name] = module
    return result


def quantize_torch(
    model: nn.Module, calibration: Sequence[tuple[torch.Tensor, ...]], *, keep_fp: set[str]
) -> nn.Module:
    """A copy of ``model`` with NNCF fake quantizers on every convolution except the ``keep_fp`` modules.

    Only convolutions are quantized, as in the PTQ files: additions, concatenations and data
    consistency stay in float.
    """
    import nncf
    from nncf.torch.function_hook.nncf_graph.nncf_graph_builder import build_nncf_graph

    from edgesr.models.deepcomplex import ComplexConv2d

    if any(isinstance(module, ComplexConv2d) for module in model.modules()):
        raise QatUnavailable(
            "DeepcomplexMRI's complex convolutions run as one convolution whose weight is computed from "
            "the real and imaginary kernels; NNCF fake-quantizes only convolutions with a weight tensor"
        )
    nncf.set_log_level(logging.WARNING)
    model = copy.deepcopy(model).cpu().eval()
    example = calibration[0]
    try:  # NNCF's torch tracing fails in its own ways (seen: a TypeError in its deepcopy of MoDL)
        graph = build_nncf_graph(model, example)  # traced once: for the convs and the other op types
        convs = _conv_nodes(graph)
        types = {n.node_type for n in graph.get_all_nodes()} - {"conv2d"}
    except Exception as exc:
        raise QatUnavailable(f"NNCF cannot trace {type(model).__name__} ({exc})") from exc
    unknown = keep_fp - set(convs.values())
    if unknown:
        raise ConfigError(f"quantize: layers kept in float are not convolutions: {sorted(unknown)}")
    names = [node for node, module in convs.items() if module in keep_fp]
    try:
        return nncf.quantize(
            model, nncf.Dataset(list(calibration)), subset_size=len(calibration),
            ignored_scope=nncf.IgnoredScope(names=names, types=sorted(types), validate=False),
        )  # fmt: skip
    except Exception as exc:
        raise QatUnavailable(f"NNCF cannot insert quantizers into {type(model).__name__} ({exc})") from exc


def finetune(
    fake_quantized: nn.Module,
    float_model: nn.Module,
    *,
    spec: ModelSpec,
    model_name: str,
    model_options: dict[str, Any],
    dataset: PreparedDataset,
    settings: DistillSettings,
    out: Path,
    resume: bool,
    console: Console | None = None,
) -> nn.Module:
    """Distils ``float_model`` into the fake-quantized copy; returns it with its best validation weights.

    ``out`` is the training run's folder: with ``resume`` and a ``last/`` checkpoint there, training
    continues where it stopped (the fake-quantized model is rebuilt identically from the same
    calibration, then its trained weights and scales are loaded).
    """
    env = DistEnv(0, 1, torch.device("cpu"))
    resume = resume and checkpoint_exists(out / "last")
    if not resume:  # a QAT run killed before its first checkpoint starts over
        discard_run_without_checkpoint(out)
    # Saved under a name the model registry does not know: these checkpoints hold NNCF's quantizer
    # state beside the weights, and only this module can rebuild the network they fit.
    distill(
        float_model.cpu(), fake_quantized, spec=spec, student_name=f"{model_name}+nncf-qat",
        student_options=model_options,
        # amp off: the fake quantizers emulate INT8 rounding of fp32 values; under bf16 autocast the
        # convolutions between them would round again, to another grid than the runtime's.
        dataset=dataset, settings=dataclasses.replace(settings, amp=False), out=out, env=env,
        config={"qat": True},
        resume=resume, console=console,
    )  # fmt: skip
    reached = read_metadata(out / "last")["step"]
    if reached < settings.steps:  # Ctrl-C or SIGTERM: fit saved last/ and returned early
        raise EdgesrError(
            f"quantization-aware training stopped at step {reached} of {settings.steps}; "
            "run the same command with resume=true to continue it"
        )
    load_weights(out / "best", fake_quantized)
    return fake_quantized.eval()


def to_openvino(fake_quantized: nn.Module, example: tuple[torch.Tensor, ...]) -> Any:
    """The OpenVINO model of the NNCF fake-quantized torch model (its convolutions run in INT8)."""
    import openvino

    with torch.no_grad(), warnings.catch_warnings():
        # The converter traces the model and compares the trace with an eager run; fake quantizers
        # round differently in the two, which it reports as a mismatch. The file is verified below.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*Tensor-likes are not close.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.jit.trace, used by it
        return openvino.convert_model(fake_quantized.eval(), example_input=example)


def to_qdq_onnx(
    fake_quantized: nn.Module,
    spec: ModelSpec,
    example: tuple[torch.Tensor, ...],
    path: Path,
    *,
    dynamic: bool = True,
) -> Path:
    """A standard QDQ ONNX of the fake-quantized model (QuantizeLinear/DequantizeLinear only).

    ``dynamic``: batch, height and width free; else fixed at ``example``'s shapes (TensorRT profiles).
    """
    import nncf
    import onnx
    from nncf.parameters import StripFormat

    # NNCF's strip imports torchao, which logs at import that its GPU kernels (CUDA, Triton) are absent
    # on a CPU machine, and torch then logs a deprecation about torchao's enum registration: noise.
    for noisy in ("torchao", "torchao.kernel.intmm", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    native = nncf.strip(
        copy.deepcopy(fake_quantized), do_copy=False, strip_format=StripFormat.NATIVE, example_input=example
    )
    axes: dict[str, dict[int, str]] = {}
    for tensor, name in zip(example, spec.input_names, strict=True):
        # Batch, height and width are free (a mask's singleton height stays 1); names per input, since
        # SR's lr and base differ in size by the scale.
        spatial = [(axis, f"{name}_{label}") for axis, label in ((2, "height"), (3, "width"))]
        axes[name] = {0: "batch"} | {axis: label for axis, label in spatial if tensor.shape[axis] > 1}
    axes |= {name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in spec.output_names}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        torch.onnx.export(
            native.eval(), example, str(tmp), dynamo=False, opset_version=17,
            input_names=list(spec.input_names), output_names=list(spec.output_names),
            dynamic_axes=axes if dynamic else None,
        )  # fmt: skip
        onnx.checker.check_model(str(tmp), full_check=True)
    return path


def require_signed_qdq(path: Path) -> None:
    """Refuses a QDQ file that TensorRT's explicit quantization cannot take (unsigned or zero point != 0).

    NNCF quantizes an activation that is never negative (after a ReLU) as unsigned 8-bit, which ONNX
    Runtime runs but TensorRT does not: it takes signed INT8 with zero point 0 only.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    constants = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = next(a.t for a in node.attribute if a.name == "value")
    # The TorchScript exporter passes shared zero points through Identity nodes.
    aliases = {node.output[0]: node.input[0] for node in model.graph.node if node.op_type == "Identity"}
    unsigned = []
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        name = node.input[2] if len(node.input) > 2 else ""
        while name in aliases:
            name = aliases[name]
        if name not in constants:  # no zero point: UINT8 by the ONNX standard's default
            unsigned.append(node.name or node.output[0])
            continue
        zero_point = constants[name]
        values = numpy_helper.to_array(zero_point)
        if zero_point.data_type != onnx.TensorProto.INT8 or values.any():
            unsigned.append(node.name or node.output[0])
    if unsigned:
        raise EdgesrError(
            f"{path}: {len(unsigned)} quantizers are unsigned or have a zero point (first: {unsigned[0]}); "
            "TensorRT takes signed INT8 with zero point 0 only. The card's QAT model quantizes them so; "
            "export precisions=[fp16] for TensorRT, or re-run QAT with symmetric signed activations"
        )


def largest_difference(
    reference: nn.Module, predictor: Any, spec: ModelSpec, example: tuple[torch.Tensor, ...]
) -> float:
    """The largest absolute difference between the torch model and a runtime predictor on ``example``."""
    with torch.no_grad():
        expected = reference.eval()(*example).float()
    got = predictor(dict(zip(spec.input_names, example, strict=True)))
    return float((got.float() - expected).abs().max())


__all__ = [
    "QatUnavailable",
    "finetune",
    "kept_modules",
    "largest_difference",
    "quantize_torch",
    "require_signed_qdq",
    "to_openvino",
    "to_qdq_onnx",
    "torch_inputs",
]
