"""Runs an ONNX file or an OpenVINO model (IR, or an INT8 model from NNCF) as a *predictor*.

OpenVINO 2026.4 reads the opset-20 ONNX ``DFT`` wrongly: it ignores the ``axis`` input and transforms
axis 1 whatever the input says (measured: a single DFT node with axis 2 or 3 matches numpy's FFT along
axis 1 exactly, and nothing else). That is why the exported DeepcomplexMRI came out wrong (DESIGN.md
section 5) while ONNX Runtime matched. :func:`read_onnx` works around it in the graph, exactly: each
DFT over another axis is wrapped in two transposes that swap that axis with axis 1. Every ONNX file
edgesr hands to OpenVINO goes through it.

Recon models: :func:`keep_dft_angles_float` keeps the DFT matrices' angle arithmetic in FP32 whatever the
inference precision (in BF16 it cost `deepcomplex-r4` 3.3 dB, measured).

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

from edgesr.export.onnxruntime import fixed_lr_size, numpy_feeds  # the conversions both runtimes share

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
            model = read_onnx(model) if self.path.suffix == ".onnx" else core.read_model(str(model))
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
        self.fixed_shapes = {
            port.get_any_name(): tuple(
                d.get_length() if d.is_static else None for d in port.get_partial_shape()
            )
            for port in self._compiled.inputs
        }
        self.fixed_lr_size = fixed_lr_size(self.fixed_shapes)

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
        result = self._request.infer(numpy_feeds(inputs, self._input_names, self.fixed_shapes))
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


def read_onnx(path: str | Path) -> Any:
    """An ONNX file as an ``openvino.Model``: DFT nodes rewritten to transform axis 1 only (files without
    a DFT over another axis are read as they are), and the DFT matrices' angles kept in FP32
    (:func:`keep_dft_angles_float`)."""
    import tempfile

    import onnx
    import openvino

    model = onnx.load(str(path))
    if not dft_axes_to_one(model):
        return keep_dft_angles_float(openvino.Core().read_model(str(path)))
    with tempfile.TemporaryDirectory() as folder:
        rewritten = Path(folder) / "model.onnx"
        onnx.save(model, str(rewritten))
        # read_model parses the whole file (weights included) into memory: the file may go after.
        return keep_dft_angles_float(openvino.Core().read_model(str(rewritten)))


def keep_dft_angles_float(model: Any) -> Any:
    """``model`` with the float arithmetic that depends only on input *sizes* marked to run in FP32.

    A recon export builds its DFT matrices in the graph from the image size
    (:func:`edgesr.physics.fft.centered_dft_matrix`: integer phases, then ``2 pi p / N``, then cos/sin).
    Under a BF16 inference precision OpenVINO ran that multiplication in BF16, whose 8-bit mantissa
    puts the angles off by up to ~0.01 rad: `deepcomplex-r4` lost 3.3 dB against PyTorch; with the
    angles marked, -0.010 dB (the matrix products and the data consistency still run in BF16). Models
    without such nodes (SR networks) are returned as they are. The mark is OpenVINO's ``precise``
    rt_info (``ov::disable_fp16_compression``), which the CPU plugin honours for BF16 as well; Python
    can read it but not create it, so it is written into the IR text and read back.

    Limit (measured, OpenVINO 2026.4): marks inside a ``Loop`` body are not honoured. MoDL, whose
    unrolls and CG steps are loops, then ran its DFT products in BF16 and lost 4.2 dB (marking every
    node, convolutions included, changed nothing), so its OpenVINO exports below FP32 use the DFT op
    (:func:`edgesr.export.build.fft_form`; -0.001 dB).
    """
    import tempfile
    import xml.etree.ElementTree as ElementTree

    import openvino

    names = _size_only_float_nodes(model)
    if not names:
        return model
    with tempfile.TemporaryDirectory() as folder:
        xml_path = Path(folder) / "model.xml"
        openvino.save_model(model, str(xml_path), compress_to_fp16=False)
        tree = ElementTree.parse(xml_path)
        found: set[str] = set()
        for layer in tree.iter("layer"):  # loop bodies' layers too (nested <body><layers>)
            name = layer.get("name", "")
            if name not in names:
                continue
            found.add(name)
            info = layer.find("rt_info")
            if info is None:  # OpenVINO reads a layer's first <rt_info> only: add to it, or make one
                info = ElementTree.Element("rt_info")
                after_data = 1 if layer.find("data") is not None else 0
                layer.insert(after_data, info)
            ElementTree.SubElement(info, "attribute", name="precise", version="0")
        if found != names:  # the IR's layout changed: fail loudly rather than run the angles in BF16
            missing = sorted(names - found)
            raise RuntimeError(f"could not mark {len(missing)} DFT-matrix nodes in the IR: {missing[:5]}")
        tree.write(xml_path, encoding="utf-8", xml_declaration=True)
        return openvino.Core().read_model(str(xml_path), str(xml_path.with_suffix(".bin")))


# Ops that move values without computing: the ONNX reader reshapes constants (conv biases) to targets
# computed from an input's rank, which would otherwise count as size arithmetic.
_DATA_MOVEMENT = frozenset(
    {"Reshape", "Concat", "Squeeze", "Unsqueeze", "Broadcast", "Transpose", "Gather", "Slice", "StridedSlice"}
)


def _size_only_float_nodes(model: Any) -> set[str]:
    """Names of the float-valued nodes of ``model`` (and of its loop bodies) computed from input shapes
    (through ``ShapeOf``) and constants only, never from an input's values. Constant-only arithmetic
    (a bias reshaped) is left out: OpenVINO folds it when the model loads."""
    constant: set[int] = set()  # by instance id: the Python wrappers are new objects at every call
    from_sizes: set[int] = set()
    names: set[str] = set()
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        sources = [op.input_value(i).get_node().get_instance_id() for i in range(op.get_input_size())]
        if kind == "Constant":
            constant.add(op.get_instance_id())
        elif kind == "ShapeOf":  # an input's size, unless it is the shape of a constant
            (constant if sources[0] in constant else from_sizes).add(op.get_instance_id())
        elif kind != "Parameter" and sources and all(s in constant or s in from_sizes for s in sources):
            if any(s in from_sizes for s in sources):
                from_sizes.add(op.get_instance_id())
                if (
                    kind not in _DATA_MOVEMENT
                    and op.get_output_size() == 1
                    and op.get_output_element_type(0).is_real()
                ):
                    names.add(op.get_friendly_name())
            else:
                constant.add(op.get_instance_id())
        if hasattr(op, "get_function"):  # Loop / TensorIterator bodies
            names |= _size_only_float_nodes(op.get_function())
    return names


def dft_axes_to_one(model: Any) -> int:
    """Rewrites, in place, each ``DFT`` of ``model`` (an ``onnx.ModelProto``) over an axis other than 1
    as ``Transpose(swap 1, axis) -> DFT(axis=1) -> Transpose(swap 1, axis)``; returns how many.

    Walks the bodies of ``Loop``/``If``/``Scan`` nodes too: an unrolled recon model exported as a loop
    (MoDL) has its FFTs there.

    Raises:
        ValueError: a DFT whose axis is not a constant, or whose input rank is unknown.
    """
    import onnx

    ranks = {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in _typed_values(onnx.shape_inference.infer_shapes(model))
        if v.type.tensor_type.HasField("shape")
    }
    return _dft_axes_to_one_in(model.graph, {}, ranks)


def _dft_axes_to_one_in(graph: Any, outer_constants: dict[str, np.ndarray], ranks: dict[str, int]) -> int:
    import onnx
    from onnx import helper, numpy_helper

    constants = dict(outer_constants)
    constants.update({t.name: numpy_helper.to_array(t) for t in graph.initializer})
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    rewritten = 0
    for node in graph.node:  # subgraphs first: they see this graph's constants
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                rewritten += _dft_axes_to_one_in(attribute.g, constants, ranks)
    nodes = []
    for node in graph.node:
        axis = _dft_axis(node, constants)
        if axis is None:
            nodes.append(node)
            continue
        rank = ranks.get(node.input[0])
        if not rank:
            raise ValueError(f"DFT node {node.name!r}: the rank of its input {node.input[0]!r} is unknown")
        axis = axis + rank if axis < 0 else axis
        if axis == 1:
            nodes.append(node)
            continue
        perm = list(range(rank))
        perm[1], perm[axis] = perm[axis], perm[1]
        moved_in, moved_out, axis_one = (f"{node.name}__axis1_{part}" for part in ("in", "out", "axis"))
        # A Constant node rather than an initializer: it is valid in a loop body as in the main graph.
        nodes.append(
            helper.make_node(
                "Constant",
                [],
                [axis_one],
                value=numpy_helper.from_array(np.array(1, dtype=np.int64)),
                name=axis_one,
            )
        )
        nodes.append(helper.make_node("Transpose", [node.input[0]], [moved_in], perm=perm, name=moved_in))
        dft = onnx.NodeProto()
        dft.CopyFrom(node)
        while len(dft.input) < 3:
            dft.input.append("")
        dft.input[0], dft.input[2], dft.output[0] = moved_in, axis_one, moved_out
        nodes.append(dft)
        nodes.append(helper.make_node("Transpose", [moved_out], [node.output[0]], perm=perm, name=moved_out))
        rewritten += 1
    if rewritten:
        del graph.node[:]
        graph.node.extend(nodes)
    return rewritten


def _dft_axis(node: Any, constants: dict[str, np.ndarray]) -> int | None:
    """The axis of an opset-20 DFT node (its third input), or None for any other node."""
    if node.op_type != "DFT":
        return None
    if len(node.input) < 3 or not node.input[2]:
        return -2  # opset 20's default: the last signal axis
    if node.input[2] not in constants:
        raise ValueError(f"DFT node {node.name!r}: its axis {node.input[2]!r} is not a constant")
    return int(constants[node.input[2]])


def _typed_values(model: Any) -> list[Any]:
    """Every typed value of the model, those of loop bodies and other subgraphs included."""
    import onnx

    values: list[Any] = []
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        values += [*graph.input, *graph.value_info, *graph.output]
        graphs += [a.g for n in graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]
    return values
