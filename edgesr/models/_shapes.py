"""Per-layer widths of a network, so that a pruned model is saved as a shape spec + safetensors.

Structured pruning shrinks channel counts inside a registered preset. A checkpoint then stores the
preset's name and options, the weights, and :func:`shape_changes` (the layers whose widths differ from
the preset, as JSON); loading rebuilds the preset, applies those entries with
:func:`apply_layer_shapes` and loads the weights strictly. No module is ever pickled (DESIGN.md 2.7),
so loading a checkpoint cannot run code.

What :func:`layer_shapes` records, keyed by name:

* every ``nn.Conv2d``, ``nn.Linear``, ``nn.BatchNorm2d`` and ``nn.PReLU``, with the constructor
  arguments that rebuild it (``"type"`` names the class);
* tensors held directly by plain ``nn.Module`` subclasses, i.e. edgesr's own modules
  (``ComplexConv2d.bias``, ``MoDL.lam_raw``, ``KSpaceDataConsistency.raw``), as
  ``{"type": "Parameter" | "Buffer", "shape": [...]}`` under the tensor's state-dict name.

Any other torch layer that holds tensors (``nn.Conv1d``, ``nn.GroupNorm``, a subclass of ``nn.Conv2d``)
raises ``ValueError``: its widths live in attributes this module does not know how to rebuild, and
skipping it would only move the failure to load time.

Depth: a ``nn.ModuleList`` shorter than the preset's (an RDN with some of its dense blocks removed,
:func:`edgesr.compress.prune.keep_blocks`) is recorded as ``{"type": "ModuleList", "length": n}`` under
its name; loading keeps the first ``n`` entries before the widths are applied. The kept blocks are
renumbered from 0 in the pruned model's state dict, so which ones were kept needs no record.

Widths kept as plain attributes: none in edgesr's models. Their forward passes read widths off the
tensors (``torch.cat`` of RDN's dense features, ``_split`` of complex channel pairs); the attributes they
do keep (``RDN.in_channels``, ``SRResNet.in_channels``, ``DeepComplexMRI.coils``, ``scale``) are the
model's interface, set by the preset's options, and pruning must leave the image and coil channels
(the first layer's inputs, the last layer's outputs) alone. An architecture that stores an internal
width as an attribute needs an entry here before it can be pruned.

Constraints that the pruner, not this module, must respect:

* sub-pixel upsampling (:class:`edgesr.models._blocks.SubPixelUpsampler`): ``PixelShuffle(r)`` turns
  each group of ``r^2`` consecutive channels into one output channel, so the conv feeding it must drop
  whole groups and keep a multiple of ``r^2`` outputs; the layers after the shuffle (a PReLU, the next
  conv's inputs) drop the matching channels. Not checked here: any width is a valid rebuild, and a
  non-multiple fails at the first forward with PixelShuffle's own error.
* complex layers (``ComplexConv2d``): ``real`` and ``imag`` keep the same channels, and the
  interleaved ``bias`` keeps both entries (``2k``, ``2k + 1``) of each kept channel ``k``.

Example:
    >>> changes = shape_changes(create_model("rdn_tiny"), pruned)      # saved as JSON
    >>> model = apply_layer_shapes(create_model("rdn_tiny"), changes)  # on load
    >>> model.load_state_dict(pruned.state_dict(), strict=True)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

# The layers rebuilt from their constructor arguments. Exact types only: a subclass may take other
# arguments or keep more state, so it is refused rather than rebuilt as its base class.
_LAYERS: dict[str, type[nn.Module]] = {
    "Conv2d": nn.Conv2d,
    "Linear": nn.Linear,
    "BatchNorm2d": nn.BatchNorm2d,
    "PReLU": nn.PReLU,
}
_BARE = ("Parameter", "Buffer")
# torch classes that only hold children, never width-dependent state of their own.
_CONTAINERS: tuple[type[nn.Module], ...] = (nn.Module, nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _is_plain(module: nn.Module) -> bool:
    """True when no class of the module, apart from torch's containers, comes from torch."""
    return all(
        cls in _CONTAINERS or cls.__module__.split(".")[0] != "torch"
        for cls in type(module).__mro__
        if cls is not object
    )


def _own_tensors(module: nn.Module) -> list[tuple[str, str, torch.Tensor]]:
    """(name, "Parameter" | "Buffer", tensor) held by ``module`` itself, as its state dict has them."""
    tensors: list[tuple[str, str, torch.Tensor]] = [
        (name, "Parameter", p) for name, p in module.named_parameters(recurse=False)
    ]
    skipped = module._non_persistent_buffers_set  # not in the state dict, so nothing to load into them
    tensors += [(n, "Buffer", b) for n, b in module.named_buffers(recurse=False) if n not in skipped]
    return tensors


def _json_tuple(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _describe(module: nn.Module) -> dict[str, Any]:
    """The constructor arguments of one of the ``_LAYERS``, as JSON values (tuples become lists)."""
    if isinstance(module, nn.Conv2d):
        return {
            "type": "Conv2d",
            "in_channels": module.in_channels,
            "out_channels": module.out_channels,
            "kernel_size": _json_tuple(module.kernel_size),
            "stride": _json_tuple(module.stride),
            "padding": _json_tuple(module.padding),  # a tuple, or "same"/"valid"
            "dilation": _json_tuple(module.dilation),
            "groups": module.groups,
            "bias": module.bias is not None,
            "padding_mode": module.padding_mode,
        }
    if isinstance(module, nn.Linear):
        return {
            "type": "Linear",
            "in_features": module.in_features,
            "out_features": module.out_features,
            "bias": module.bias is not None,
        }
    if isinstance(module, nn.BatchNorm2d):
        return {
            "type": "BatchNorm2d",
            "num_features": module.num_features,
            "eps": module.eps,
            "momentum": module.momentum,
            "affine": module.affine,
            "track_running_stats": module.track_running_stats,
        }
    if isinstance(module, nn.PReLU):
        return {"type": "PReLU", "num_parameters": module.num_parameters}
    raise TypeError(f"no description for {type(module).__name__}")  # unreachable: callers check _LAYERS


def _width(entry: Mapping[str, Any], key: str) -> int:
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be a positive integer; got {value!r}")
    return value


def _tuple_or_str(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value  # JSON turned the tuples into lists


def _build(entry: Mapping[str, Any], factory: dict[str, Any]) -> nn.Module:
    """A fresh layer from a ``_describe`` entry; ``factory`` holds the device and dtype."""
    kind = entry["type"]
    if kind == "Conv2d":
        return nn.Conv2d(
            _width(entry, "in_channels"),
            _width(entry, "out_channels"),
            _tuple_or_str(entry["kernel_size"]),
            stride=_tuple_or_str(entry["stride"]),
            padding=_tuple_or_str(entry["padding"]),
            dilation=_tuple_or_str(entry["dilation"]),
            groups=_width(entry, "groups"),
            bias=bool(entry["bias"]),
            padding_mode=entry["padding_mode"],
            **factory,
        )
    if kind == "Linear":
        return nn.Linear(
            _width(entry, "in_features"), _width(entry, "out_features"), bias=bool(entry["bias"]), **factory
        )
    if kind == "BatchNorm2d":
        return nn.BatchNorm2d(
            _width(entry, "num_features"),
            eps=float(entry["eps"]),
            momentum=entry["momentum"],
            affine=bool(entry["affine"]),
            track_running_stats=bool(entry["track_running_stats"]),
            **factory,
        )
    if kind == "PReLU":
        return nn.PReLU(_width(entry, "num_parameters"), **factory)
    raise ValueError(f"unknown layer type {kind!r}")


def _tensor_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


def layer_shapes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """A JSON-able description of every shape-bearing part of ``model``, keyed by name.

    Layers (``Conv2d``, ``Linear``, ``BatchNorm2d``, ``PReLU``) are keyed by module name and hold their
    constructor arguments; tensors held directly by edgesr's own modules are keyed by their state-dict
    name and hold their shape (see the module docstring).

    Args:
        model: any network built from the supported layers and plain ``nn.Module`` subclasses.

    Returns:
        ``{name: {"type": ..., ...}}`` in ``model.named_modules()`` order; only JSON types inside.

    Raises:
        ValueError: a module of another torch layer type holds tensors, or a layer's tensors disagree
            with its width attributes (a pruner that sliced the weights but left ``out_channels``).
    """
    shapes: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        tensors = _own_tensors(module)
        if type(module) in _LAYERS.values():
            entry = _describe(module)
            # A meta-device twin costs no memory and gives the tensor shapes the entry promises.
            expected = _tensor_shapes(_build(entry, {"device": torch.device("meta")}))
            if expected != _tensor_shapes(module):
                raise ValueError(
                    f"layer {name!r} ({entry['type']}): its tensors {_tensor_shapes(module)} disagree with "
                    f"its attributes {entry}; a pruner must update both"
                )
            shapes[name] = entry
        elif tensors and _is_plain(module):
            for tensor_name, kind, tensor in tensors:
                full_name = f"{name}.{tensor_name}" if name else tensor_name
                shapes[full_name] = {"type": kind, "shape": list(tensor.shape)}
        elif tensors:
            raise ValueError(
                f"module {name!r} of type {type(module).__qualname__} holds tensors "
                f"({', '.join(n for n, _, _ in tensors)}) but is not a supported layer "
                f"({', '.join(_LAYERS)}, exact types); its widths cannot be recorded"
            )
    return shapes


def _list_lengths(preset: nn.Module, model: nn.Module) -> dict[str, int]:
    """The ``nn.ModuleList`` s of ``model`` shorter than the preset's list of the same name: their lengths."""
    lists = {name: module for name, module in preset.named_modules() if isinstance(module, nn.ModuleList)}
    return {
        name: len(module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and name in lists and len(module) < len(lists[name])
    }


def _truncate(model: nn.Module, lengths: Mapping[str, int]) -> None:
    """Keeps the first ``lengths[name]`` entries of each named ``nn.ModuleList`` (checked by the caller)."""
    for name, length in lengths.items():
        owner_name, _, attribute = name.rpartition(".")
        owner = _lookup(model, owner_name)
        found = _lookup(model, name)
        if isinstance(owner, nn.Module) and isinstance(found, nn.ModuleList):
            owner._modules[attribute] = nn.ModuleList(list(found)[:length])


def shape_changes(preset: nn.Module, model: nn.Module) -> dict[str, dict[str, Any]]:
    """The entries of :func:`layer_shapes` where ``model`` differs from ``preset``: what a checkpoint stores.

    Args:
        preset: the registered preset, freshly built with the model's options.
        model: the same architecture, possibly with other widths (a pruned student).

    Returns:
        ``{name: entry}`` for every layer or bare tensor whose description changed; empty for an
        unpruned model.

    Raises:
        ValueError: as :func:`layer_shapes`, or ``model`` is not ``preset`` with other widths (a layer
            or tensor exists in only one of them, or changed type).
    """
    lengths = _list_lengths(preset, model)
    if lengths:  # fewer blocks: compare with the preset cut to the same depth
        preset = copy.deepcopy(preset)
        _truncate(preset, lengths)
    before, after = layer_shapes(preset), layer_shapes(model)
    if before.keys() != after.keys():
        missing, added = sorted(before.keys() - after.keys()), sorted(after.keys() - before.keys())
        raise ValueError(
            f"the model is not its preset with other widths: missing {missing}, not in the preset {added}"
        )
    for name, entry in after.items():
        if entry["type"] != before[name]["type"]:
            raise ValueError(
                f"{name!r} is a {entry['type']} in the model but a {before[name]['type']} in the preset"
            )
    depth = {name: {"type": "ModuleList", "length": length} for name, length in lengths.items()}
    return depth | {name: entry for name, entry in after.items() if entry != before[name]}


def _lookup(model: nn.Module, name: str) -> object:
    """The module, parameter or buffer called ``name`` in ``model`` (``None`` when there is none)."""
    found: object = model
    for part in name.split(".") if name else []:
        if not isinstance(found, nn.Module):
            return None
        for table in (found._modules, found._parameters, found._buffers):
            if part in table:
                found = table[part]
                break
        else:
            return None
    return found


def _kind(found: object) -> str:
    if isinstance(found, nn.Parameter):
        return "Parameter"
    if isinstance(found, torch.Tensor):
        return "Buffer"
    return type(found).__name__


def _prepare(model: nn.Module, name: str, entry: Mapping[str, Any]) -> tuple[object, object]:
    """(the object now called ``name``, its fresh replacement); nothing in ``model`` changes yet."""
    kind = entry.get("type") if isinstance(entry, Mapping) else None
    if kind not in _LAYERS and kind not in _BARE:
        raise ValueError(f"layer shape {name!r}: unknown type {kind!r} in {entry!r}")
    found = _lookup(model, name)
    if found is None:
        raise ValueError(f"layer shape {name!r}: the model has no {kind} of that name")
    if kind in _LAYERS:
        if type(found) is not _LAYERS[kind] or not isinstance(found, nn.Module):
            raise ValueError(f"layer shape {name!r}: recorded {kind}, found {_kind(found)}")
        if not name:
            raise ValueError("layer shape '': the model itself cannot be replaced in place")
        reference = next((t for t in found.parameters() if t.is_floating_point()), None)
        factory = {} if reference is None else {"device": reference.device, "dtype": reference.dtype}
        try:
            fresh = _build(entry, factory)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(
                f"layer shape {name!r}: cannot rebuild {kind} from {dict(entry)}: {exc}"
            ) from None
        fresh.train(found.training)
        old_parameters = dict(found.named_parameters())
        for parameter_name, parameter in fresh.named_parameters():
            if parameter_name in old_parameters:  # keep frozen parameters frozen
                parameter.requires_grad_(old_parameters[parameter_name].requires_grad)
        return found, fresh
    owner = _lookup(model, name.rpartition(".")[0])
    if isinstance(owner, nn.Module) and not _is_plain(owner):
        # Its widths are the layer's attributes: record the layer, not one of its tensors.
        raise ValueError(f"layer shape {name!r}: the {kind} belongs to a {type(owner).__name__} layer")
    if _kind(found) != kind or not isinstance(found, torch.Tensor):
        raise ValueError(f"layer shape {name!r}: recorded {kind}, found {_kind(found)}")
    shape = entry.get("shape")
    if (
        not isinstance(shape, Sequence)
        or isinstance(shape, str)
        or not all(isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in shape)
    ):
        raise ValueError(f"layer shape {name!r}: shape must be a list of sizes; got {shape!r}")
    empty = torch.empty(tuple(shape), dtype=found.dtype, device=found.device)
    return found, nn.Parameter(empty, requires_grad=found.requires_grad) if kind == "Parameter" else empty


def apply_layer_shapes(model: nn.Module, changes: Mapping[str, Mapping[str, Any]]) -> nn.Module:
    """Gives ``model`` the recorded widths, so that the pruned weights load into it strictly.

    Each named layer is replaced by a fresh one of the same type built from its entry (on the old
    layer's device and dtype, in its train/eval mode, frozen parameters staying frozen), each named bare
    tensor by an uninitialised one of the recorded shape. Every reference to a replaced object is
    updated, so a layer shared by two parents stays shared. All entries are checked before anything
    changes: on an error the model is left as it was. Hooks on replaced layers are not carried over.

    Args:
        model: the registered preset, freshly built with the checkpoint's options.
        changes: :func:`shape_changes` output, possibly after a JSON round trip.

    Returns:
        ``model`` itself, changed in place. Its new layers hold random or uninitialised values until
        ``load_state_dict`` fills them.

    Raises:
        ValueError: an entry names nothing in the model, names an object of another type (recorded
            ``Conv2d``, found ``Linear``), names a tensor owned by a layer, or cannot be rebuilt
            (missing keys, widths that are not positive integers).
    """
    lengths = {name: _list_length(model, name, entry) for name, entry in changes.items() if _is_depth(entry)}
    widths = {name: entry for name, entry in changes.items() if not _is_depth(entry)}
    replacements = {id(old): (old, new) for old, new in (_prepare(model, n, e) for n, e in widths.items())}
    _truncate(model, lengths)  # every entry was checked above: nothing has changed until here
    if not replacements:
        return model
    for module in list(model.modules()):
        for table in (module._modules, module._parameters, module._buffers):
            for key, value in table.items():
                if id(value) in replacements and replacements[id(value)][0] is value:
                    table[key] = replacements[id(value)][1]  # type: ignore[assignment]
    return model


def _is_depth(entry: Any) -> bool:
    return isinstance(entry, Mapping) and entry.get("type") == "ModuleList"


def _list_length(model: nn.Module, name: str, entry: Mapping[str, Any]) -> int:
    """The checked length of a ``ModuleList`` entry: a list of that name, cut to 1..its length."""
    found = _lookup(model, name) if name else None
    if not isinstance(found, nn.ModuleList):
        raise ValueError(f"layer shape {name!r}: the model has no ModuleList of that name")
    length = entry.get("length")
    if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= len(found):
        raise ValueError(
            f"layer shape {name!r}: length must be an integer in 1..{len(found)} (the preset's); "
            f"got {length!r}"
        )
    return length
