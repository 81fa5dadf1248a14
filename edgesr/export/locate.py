"""Which layer a runtime computes differently from PyTorch: the diagnosis of a failed parity check.

When a float artifact's output differs from PyTorch's beyond the limit, the error should say where in
the network it starts, not only where in the image it is largest. This runs the artifact once more on
the input that failed worst, with the output of every convolution of the graph exposed (ONNX Runtime:
extra graph outputs; OpenVINO: ``Model.add_outputs`` on the same tensors of the IR), and the torch
module with forward hooks on the convolutions those nodes came from (the dynamo exporter records each
node's torch module in its ``pkg.torch.onnx.name_scopes`` metadata). Convolutions are compared in the
graph's order; the first whose output differs beyond the limit (relative to its own range) is the layer
named. A module called several times (a shared block) is matched call by call.

Only convolutions of the main graph are checked: those inside ONNX ``Loop`` bodies (MoDL's unrolls)
cannot be exposed as outputs, and the diagnosis says so. It is a diagnosis: it never changes whether an
export passes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


def first_divergent_layer(
    module: nn.Module,
    input_names: tuple[str, ...] | list[str],
    onnx_path: Path,
    artifact: Path,
    runtime: str,
    item: Mapping[str, np.ndarray],
    *,
    limit: float,
    threads: int = 0,
) -> dict[str, Any]:
    """Compares every main-graph convolution's output of ``artifact`` with ``module``'s on ``item``.

    Args:
        module: the torch module the artifact was exported from (the form that was exported).
        input_names: the network's inputs in call order (the spec's).
        onnx_path: the ONNX file the artifact was built from (it names each node's torch module).
        artifact: the file the runtime runs (``.onnx`` for ONNX Runtime, ``.xml`` for OpenVINO).
        runtime: ``onnxruntime`` or ``openvino``.
        item: one network input, as the failed check fed it.
        limit: the difference that counts as diverging, as a fraction of each output's range. Layers
            carry float rounding too (OpenVINO's f32 convolutions ~1e-4 of the range here), so the
            caller passes a tenth of the failed output's own error when that is larger than its limit.

    Returns:
        ``{"checked": n, "layer": module name, "node": ONNX node, "relative_error": e,
        "last_match": (module name, e) or None}`` for the first layer beyond ``limit``;
        ``{"checked": n, "layer": None}`` when every convolution matches; ``{"checked": 0, "reason": ...}``
        when no convolution could be compared.
    """
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    modules = {name for name, _ in module.named_modules() if name}
    conv_nodes = [node for node in graph.node if node.op_type == "Conv"]
    convs = [(node.name, node.output[0], _innermost(node, modules)) for node in conv_nodes]
    convs = [(name, tensor, path) for name, tensor, path in convs if path]
    if not convs:
        return {"checked": 0, "reason": "no convolution in the main graph (they run inside ONNX Loop bodies)"}
    tensors = [tensor for _, tensor, _ in convs]
    if runtime == "onnxruntime":
        found = _onnxruntime_outputs(onnx_path, tensors, item, threads)
    elif runtime == "openvino":
        found = _openvino_outputs(artifact, tensors, item, threads)
    else:
        return {"checked": 0, "reason": f"no layer diagnosis for {runtime}"}
    expected = _torch_outputs(module, input_names, {path for _, _, path in convs}, item)

    calls: dict[str, int] = {}
    checked, last_match = 0, None
    for name, tensor, path in convs:
        call = calls.get(path, 0)
        calls[path] = call + 1
        wanted = expected.get(path, [])
        if tensor not in found or call >= len(wanted):
            continue  # fused away by the runtime, or not a call torch made: nothing to compare
        ours, theirs = wanted[call], found[tensor]
        if tuple(ours.shape) != tuple(theirs.shape):
            continue
        scale = max(float(ours.max() - ours.min()), 1e-12)
        error = float(np.abs(ours - theirs).max()) / scale
        checked += 1
        if not np.isfinite(error) or error > limit:
            label = path if calls[path] == 1 and len(wanted) == 1 else f"{path} (call {call + 1})"
            return {"checked": checked, "layer": label, "node": name, "relative_error": error,
                    "last_match": last_match}  # fmt: skip
        last_match = (path, error)
    if not checked:
        return {"checked": 0, "reason": "the runtime fused every convolution's output away"}
    return {"checked": checked, "layer": None}


def describe(found: dict[str, Any]) -> str:
    """One sentence for the error message."""
    if found.get("reason"):
        return f" Layer not located: {found['reason']}."
    if found.get("layer") is None:
        return (
            f" All {found['checked']} convolutions compared match PyTorch: the difference arises after "
            "them (the output arithmetic, or a layer that is not a convolution)."
        )
    text = (
        f" The first layer that differs is {found['layer']} (ONNX node {found['node']}): "
        f"{found['relative_error']:.3g} of its output's range"
    )
    if found.get("last_match"):
        text += f"; the layer before it, {found['last_match'][0]}, matches ({found['last_match'][1]:.1e})"
    return text + "."


def _innermost(node: Any, modules: set[str]) -> str:
    """The innermost torch module a dynamo-exported node came from (its scopes end with the op's name)."""
    from edgesr.compress.quantize import module_path

    scopes = [scope for scope in module_path(node) if scope in modules]
    return scopes[-1] if scopes else ""


def _torch_outputs(
    module: nn.Module,
    input_names: tuple[str, ...] | list[str],
    paths: set[str],
    item: Mapping[str, np.ndarray],
) -> dict[str, list[np.ndarray]]:
    """Every call's output of the named submodules, in call order."""
    outputs: dict[str, list[np.ndarray]] = {}
    hooks = []
    named = dict(module.named_modules())
    for path in paths:
        if path in named:

            def keep(_: nn.Module, __: Any, output: torch.Tensor, path: str = path) -> None:
                # A copy: an in-place activation after the layer would change the tensor kept.
                outputs.setdefault(path, []).append(output.detach().float().cpu().numpy().copy())

            hooks.append(named[path].register_forward_hook(keep))
    device = next(module.parameters()).device
    try:
        with torch.no_grad():
            module(*[torch.from_numpy(item[name]).to(device) for name in input_names])
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


def _onnxruntime_outputs(
    onnx_path: Path, tensors: list[str], item: Mapping[str, np.ndarray], threads: int
) -> dict[str, np.ndarray]:
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper

    proto = onnx.load(str(onnx_path))
    present = {output.name for output in proto.graph.output}
    for tensor in tensors:
        if tensor not in present:
            proto.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    options = onnxruntime.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "exposed.onnx"
        onnx.save(proto, str(path))
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [output.name for output in session.get_outputs()]
        results = session.run(names, {name: item[name] for name in (i.name for i in session.get_inputs())})
    return {name: np.asarray(value) for name, value in zip(names, results, strict=True) if name in tensors}


def _openvino_outputs(
    artifact: Path, tensors: list[str], item: Mapping[str, np.ndarray], threads: int
) -> dict[str, np.ndarray]:
    import openvino

    core = openvino.Core()
    model = core.read_model(str(artifact))
    ports = {}
    for op in model.get_ops():
        for output in op.outputs():
            for name in output.get_names():
                if name in tensors and name not in ports:
                    ports[name] = output
    if not ports:
        return {}
    model.add_outputs(list(ports.values()))
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}  # parity is checked for FP32 artifacts
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(model, "CPU", config)
    results = compiled.create_infer_request().infer({name: item[name] for name in item})
    found: dict[str, np.ndarray] = {}
    for output in compiled.outputs:
        names = set(output.get_names()) & set(ports)
        for name in names:
            found[name] = np.asarray(results[output])
    return found
