"""ONNX export with torch's dynamo exporter, named and shaped by the model's :class:`ModelSpec`.

The dynamo exporter (``torch.export`` + onnxscript) is the only one that can export the recon models:
the legacy TorchScript exporter has no translation for ``torch.fft`` or complex tensors, while dynamo
emits the ONNX ``DFT`` op. Inputs and outputs take the spec's names, so a runtime session is fed by name
exactly like the torch module.

Dynamic axes: batch, height and width are symbolic for every family (the SR ``base`` is ``scale *``
the LR size). One torchlib gap stands in the way for recon models and is worked around here: the
centered FFT's ``fftshift``/``ifftshift`` become ``aten.roll`` with shifts ``H // 2`` that are symbolic
once H is, and torchlib's ``roll`` only accepts constant shifts (it fails with "Unsupported attribute
type: list"). :func:`_roll_by_slices` replaces those ops by two slices and a concatenation, which take
symbolic bounds, before the graph is translated.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgesr._io import atomic_path
from edgesr.models.fold import fold_subpixel_tail
from edgesr.physics.fft import dft_as_matmul
from edgesr.physics.loops import unrolled
from edgesr.spec import ModelSpec


def export_onnx(
    model: nn.Module,
    spec: ModelSpec,
    example_inputs: Mapping[str, torch.Tensor],
    path: str | Path,
    *,
    dynamic: bool = True,
    fft: str = "matmul",
    unroll: Sequence[str] = (),
    fold: bool = True,
) -> Path:
    """Exports ``model`` to an ONNX file whose inputs/outputs carry the spec's names; checks the file.

    The model is traced in eval mode (BN running statistics, as at inference) and restored to its own
    mode afterwards. The file is written atomically and passes ``onnx.checker`` before it replaces
    ``path``; weights are stored inside it (edgesr's models are far below ONNX's 2 GB limit, and one
    file can be renamed atomically where a model plus external data could not).

    Args:
        model: the network, called as ``model(*[example_inputs[n] for n in spec.input_names])``.
        spec: its spec; gives the input/output names and, for SR, the scale that ties ``base`` to ``lr``.
        example_inputs: one float32 tensor per spec input, e.g. SR ``lr [B, 1, h, w]`` and ``base
            [B, 1, h*s, w*s]``; recon ``masked_kspace [B, 2C, H, W]``, ``mask [B, 1, 1, W]``,
            ``sens_maps [B, 2C, H, W]``. Their values do not matter, only shapes and dtypes.
        path: the ``.onnx`` file to write.
        dynamic: make batch, height and width symbolic (channels stay fixed); ``False`` fixes every
            dimension to the example's.
        fft: recon models' FFTs as real matrix products (``"matmul"``, the default: the matrices are
            built in the graph for the input's size, dynamic or fixed; TensorRT before 11.2 has no DFT,
            and ONNX Runtime and OpenVINO ran the DFT op 2.6-9x slower here, DESIGN.md 5) or as the ONNX
            ``DFT`` op (``"dft"``).
        unroll: named loops to write out step by step instead of as an ONNX ``Loop`` (see
            :func:`edgesr.physics.loops.unrolled`; INT8 exports unroll the loops that hold
            convolutions, :func:`int8_unroll`).
        fold: export an SR model with its convolution to the image moved before the last sub-pixel
            shuffle (:func:`edgesr.models.fold.fold_subpixel_tail`: the same function, faster; the
            torch predictor runs the same form). INT8 exports pass ``False``: the shipped cards' INT8
            settings name the layers of the graph as trained, and QAT weights are of that structure.

    Returns:
        ``path`` as a :class:`Path`.

    Raises:
        ValueError: an example input is missing, not in the spec, of the wrong rank or not float32;
            ``fft`` is unknown.

    Example:
        >>> spec = sr_spec(modality="MR", scale=2, degradation="mr-kspace", upsampler="zero-fill",
        ...                receptive_radius=8)
        >>> export_onnx(model, spec, {"lr": torch.rand(2, 1, 37, 31), "base": torch.rand(2, 1, 74, 62)},
        ...             "model.onnx")
    """
    import onnx

    # The exporter logs a warning for each torchvision operator it cannot register when torchvision
    # is absent; edgesr's models use none of them (detection ops), so the four lines are noise.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    if fft not in ("dft", "matmul"):
        raise ValueError(f"fft must be 'dft' or 'matmul'; got {fft!r}")
    args = _ordered_inputs(spec, example_inputs)
    if dynamic and all(a.shape[0] == 1 for a in args):
        # torch.export specialises a dimension of size 1 to the constant 1 (and then reports the batch
        # as not dynamic). The models treat batch items independently in eval mode, so tracing with two
        # copies of a batch-1 example gives the same graph with a symbolic batch.
        args = tuple(torch.cat([a, a]) for a in args)
    shapes = _dynamic_shapes(spec, args) if dynamic else None
    if fold:
        model = fold_subpixel_tail(model)  # a copy, or the model itself when there is nothing to fold

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # Sharing one Dim across inputs (the same height for k-space and coil maps) is what ties
            # them together, but the exporter warns once per repeat that the name "will not be used"
            # (it is: the files carry batch/height/width). The FutureWarning is torch-internal.
            warnings.filterwarnings(
                "ignore", message=r".*will not be used, since it shares", category=UserWarning
            )
            warnings.filterwarnings("ignore", message=r".*LeafSpec.* is deprecated", category=FutureWarning)
            with dft_as_matmul(fft == "matmul"), unrolled(*unroll):
                program = torch.export.export(model, args, dynamic_shapes=shapes, strict=False)
            if _has_rolls(program):  # edgesr's own FFTs shift by slicing while exporting (physics.fft)
                program = program.run_decompositions(_SYMBOLIC_ROLL)
            onnx_program = torch.onnx.export(
                program,
                args,
                dynamo=True,
                input_names=list(spec.input_names),
                output_names=list(spec.output_names),
                # Passed again only so that the exporter names the symbolic axes batch/height/width
                # (instead of s0, s1...); the exported program already fixes which axes are dynamic.
                dynamic_shapes=shapes,
                # ONNX Runtime's basic graph optimiser does the clean-up instead (see _optimise).
                optimize=False,
                verbose=False,
            )
    finally:
        model.train(was_training)
    if onnx_program is None:  # only the legacy exporter returns None; dynamo=True always gives a program
        raise RuntimeError("torch.onnx.export returned no program")

    with atomic_path(path) as tmp, tempfile.TemporaryDirectory() as folder:
        raw = Path(folder) / "raw.onnx"
        onnx_program.save(raw, external_data=False)
        proto = onnx.load(str(raw))
        if dft_axis_as_input(proto):  # before any runtime reads it: ONNX Runtime refuses the file
            onnx.save(proto, str(raw))
        proto = _optimise(raw, Path(folder) / "optimised.onnx")
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
    return Path(path)


def _has_rolls(program: Any) -> bool:
    return any(node.target in _SYMBOLIC_ROLL for node in program.graph.nodes)


def _optimise(raw: Path, optimised: Path) -> Any:
    """The exporter's graph cleaned up by ONNX Runtime's *basic* optimiser; returns the ``ModelProto``.

    The dynamo exporter's own optimiser (onnxscript) took 35 of the 123 s of a deepcomplex-r4 export on
    2 cores (dynamic shapes make its constant folding slow); ONNX Runtime's basic level does the same
    clean-up (constant folding, redundant Slice/Unsqueeze/Identity removal, Conv+Add/Mul/BN folding)
    in under a second, from 8830 nodes to 1892 against onnxscript's 1504. The basic level writes only
    standard ONNX ops, so the file stays portable (OpenVINO, TensorRT); node names are kept, so the
    INT8 scopes that model cards record still name the same convolutions. Opset imports the file
    does not use (ONNX Runtime lists all of its own) are dropped.
    """
    import onnx
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(optimised)
    options.log_severity_level = 3
    onnxruntime.InferenceSession(str(raw), sess_options=options, providers=["CPUExecutionProvider"])
    proto = onnx.load(str(optimised))
    # ONNX Runtime drops the nodes' metadata, where the exporter records the torch modules each node was
    # traced in (compress maps INT8 scopes and QAT layers to modules through it): copied back by name.
    metadata = {node.name: list(node.metadata_props) for node in _all_nodes(onnx.load(str(raw)).graph)}
    for node in _all_nodes(proto.graph):
        if node.name in metadata and not node.metadata_props:
            node.metadata_props.extend(metadata[node.name])
    used = _used_domains(proto.graph)
    kept = [entry for entry in proto.opset_import if entry.domain in used or entry.domain in ("", "ai.onnx")]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    return proto


def _all_nodes(graph: Any) -> list[Any]:
    """The nodes of a graph and of its loop bodies and other subgraphs."""
    import onnx

    nodes = list(graph.node)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                nodes += _all_nodes(attribute.g)
    return nodes


def _used_domains(graph: Any) -> set[str]:
    return {node.domain for node in _all_nodes(graph)}


def _ordered_inputs(spec: ModelSpec, example_inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The example tensors in the spec's input order, each checked against its :class:`TensorSpec`."""
    unknown = sorted(set(example_inputs) - set(spec.input_names))
    if unknown:
        raise ValueError(
            f"example_inputs has {', '.join(map(repr, unknown))}, which the spec does not name; "
            f"the model's inputs are {', '.join(spec.input_names)}"
        )
    ordered = []
    for tensor_spec in spec.inputs:
        name = tensor_spec.name
        if name not in example_inputs:
            raise ValueError(f"example_inputs lacks the spec input {name!r} ({tensor_spec.description})")
        tensor = example_inputs[name]
        rank = len(tensor_spec.layout)
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != rank:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(
                f"example input {name!r} must be a rank-{rank} {tensor_spec.layout} tensor; got {shape}"
            )
        if tensor.dtype != getattr(torch, tensor_spec.dtype):
            raise ValueError(f"example input {name!r} must be {tensor_spec.dtype}; got {tensor.dtype}")
        ordered.append(tensor.detach())
    return tuple(ordered)


def _dynamic_shapes(spec: ModelSpec, args: Sequence[torch.Tensor]) -> dict[str, dict[int, Any]]:
    """``torch.export`` dynamic shapes for the spec's inputs: batch, height and width symbolic.

    Dims are shared by name across inputs (the same height for k-space and coil maps), and the SR
    ``base`` is expressed through ``lr``'s dims, so the exporter knows they move together. A dim that is
    1 in the example (the mask's broadcast row, a broadcast batch) stays static.
    """
    from torch.export import Dim

    batch, height, width = Dim("batch"), Dim("height"), Dim("width")
    shapes: dict[str, dict[int, Any]] = {}
    for name, tensor in zip(spec.input_names, args, strict=True):
        axes: dict[int, Any] = {0: batch, 2: height, 3: width}
        if spec.sr is not None and name == "base":
            axes = {0: batch, 2: spec.sr.scale * height, 3: spec.sr.scale * width}
        shapes[name] = {axis: dim for axis, dim in axes.items() if tensor.shape[axis] != 1}
    return shapes


# --- DFT nodes in loop bodies --------------------------------------------------------------------------


def dft_axis_as_input(model: Any) -> int:
    """Rewrites, in place, every ``DFT`` that carries opset 17's ``axis`` *attribute* into opset 20's
    form (the axis as a third, constant input); returns how many. Walks loop bodies and other subgraphs.

    The exporter writes the FFTs of the main graph in opset 20's form but those inside a ``Loop`` body
    (an unrolled model exported as a loop) in opset 17's, while the file declares opset 20: ONNX Runtime
    then refuses the file ("Unrecognized attribute: axis for operator DFT"). Both forms index the same
    axis of the same input, so the rewrite is exact.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    rewritten = 0
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        nodes, in_this_graph = [], 0
        for node in graph.node:
            axis_attributes = [a for a in node.attribute if node.op_type == "DFT" and a.name == "axis"]
            if not axis_attributes:
                nodes.append(node)
                continue
            axis_name = f"{node.name or node.output[0]}__axis"
            nodes.append(
                helper.make_node(
                    "Constant",
                    [],
                    [axis_name],
                    value=numpy_helper.from_array(np.array(axis_attributes[0].i, dtype=np.int64)),
                    name=axis_name,
                )
            )
            node.attribute.remove(axis_attributes[0])
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = axis_name
            nodes.append(node)
            in_this_graph += 1
        if in_this_graph:
            del graph.node[:]
            graph.node.extend(nodes)  # copies the nodes: their subgraphs are collected only now
        rewritten += in_this_graph
        graphs += [a.g for node in graph.node for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
    return rewritten


# --- symbolic-shift roll -----------------------------------------------------------------------------


def _roll_by_slices(x: torch.Tensor, shifts: Sequence[Any], dims: Sequence[int] = ()) -> torch.Tensor:
    """``torch.roll`` as slices and a concatenation, valid for symbolic shifts (see the module docstring).

    Slicing also works on complex tensors in torchlib, so this one form serves real and complex inputs.
    """
    if len(dims) == 0:  # torch.roll without dims rolls the flattened tensor
        return _roll_by_slices(x.flatten(), shifts, (0,)).view(x.shape)
    for shift, dim in zip(shifts, dims, strict=True):
        size = x.shape[dim]
        shift = shift % size
        x = torch.cat([x.narrow(dim, size - shift, shift), x.narrow(dim, 0, size - shift)], dim=dim)
    return x


def _shift_dims(x: torch.Tensor, dim: int | Sequence[int] | None) -> list[int]:
    if dim is None:
        return list(range(x.dim()))
    return [dim] if isinstance(dim, int) else list(dim)


def _fftshift(x: torch.Tensor, dim: int | Sequence[int] | None = None) -> torch.Tensor:
    dims = _shift_dims(x, dim)
    return _roll_by_slices(x, [x.shape[d] // 2 for d in dims], dims)


def _ifftshift(x: torch.Tensor, dim: int | Sequence[int] | None = None) -> torch.Tensor:
    dims = _shift_dims(x, dim)
    return _roll_by_slices(x, [(x.shape[d] + 1) // 2 for d in dims], dims)


# fftshift/ifftshift must be listed themselves: they are composite ops that the exporter would otherwise
# decompose into aten.roll *after* these decompositions have run.
_SYMBOLIC_ROLL = {
    torch.ops.aten.roll.default: _roll_by_slices,
    torch.ops.aten.fft_fftshift.default: _fftshift,
    torch.ops.aten.fft_ifftshift.default: _ifftshift,
}


def int8_unroll(model: nn.Module) -> tuple[str, ...]:
    """The loops an INT8 export of ``model`` writes out step by step: those whose bodies hold
    convolutions (``loops_with_convolutions`` on the model class, MoDL's unrolls), which quantizers
    would otherwise leave in float (:func:`edgesr.physics.loops.unrolled`)."""
    return tuple(getattr(model, "loops_with_convolutions", ()))


def convolutions_in_subgraphs(graph: Any) -> int:
    """How many ``Conv`` nodes of an ONNX model (``onnx.ModelProto``) lie inside ``Loop``/``If`` bodies,
    where post-training quantizers do not reach."""
    import onnx

    def inside(nodes: Any, depth: int) -> int:
        count = 0
        for node in nodes:
            if depth > 0 and node.op_type == "Conv":
                count += 1
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    count += inside(attribute.g.node, depth + 1)
        return count

    return inside(graph.graph.node, 0)
