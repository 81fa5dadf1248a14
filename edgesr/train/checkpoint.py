"""Checkpoints as safetensors + JSON: never a pickle, so loading one cannot run code.

A checkpoint is a folder::

    model.safetensors    # the model's state dict
    state.safetensors    # optimizer tensors and the torch RNG state (training checkpoints only)
    checkpoint.json      # model name and options, the layer widths where they differ from the
                         # preset (pruned models), the model spec (how to run it), step, metrics,
                         # the run's config, optimizer layout

A pruned model is rebuilt from its registered preset plus ``layer_shapes`` (JSON), never unpickled.

A folder is replaced as a whole: the new one is written beside it and swapped in with two renames, so
an interrupted save leaves the previous checkpoint intact (``load`` also finds ``<name>.old``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from edgesr._io import replace_folder
from edgesr.errors import DataError
from edgesr.models import create_model, list_models
from edgesr.models._shapes import apply_layer_shapes, shape_changes
from edgesr.spec import ModelSpec

MODEL_FILE, STATE_FILE, META_FILE = "model.safetensors", "state.safetensors", "checkpoint.json"


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state as flat tensors plus a JSON-able layout."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], layout: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for index, entries in layout["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": layout["param_groups"]}


def save_checkpoint(
    folder: str | Path,
    model: nn.Module,
    *,
    model_name: str,
    model_options: dict[str, Any],
    step: int,
    metrics: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    extra_state: dict[str, torch.Tensor] | None = None,
    machine: dict[str, Any] | None = None,
    spec: ModelSpec | None = None,
) -> Path:
    """Writes a checkpoint folder atomically (see the module docstring) and returns its path.

    ``spec`` is required for a model that anything will run (every model checkpoint); only auxiliary
    training state (a GAN's discriminator) is saved without one.
    """
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / MODEL_FILE)
    )
    meta: dict[str, Any] = {
        "format": "edgesr-checkpoint",
        "model": model_name,
        "model_options": model_options,
        "spec": spec.to_dict() if spec is not None else None,
        "layer_shapes": _layer_shape_changes(model, model_name, model_options),
        "step": step,
        "metrics": metrics or {},
        "config": config or {},
    }
    if machine:
        meta["machine"] = machine
    if optimizer is not None:
        tensors, layout = _flatten_optimizer(optimizer)
        tensors["rng.torch"] = torch.get_rng_state()
        for key, value in (extra_state or {}).items():
            tensors[f"extra.{key}"] = value.detach().cpu().contiguous()
        save_file(tensors, str(tmp / STATE_FILE))
        meta["optimizer"] = layout
        meta["scheduler"] = scheduler.state_dict() if scheduler is not None else None
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=float))
    return replace_folder(tmp, folder)


def _layer_shape_changes(model: nn.Module, name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Where ``model``'s layer widths differ from its preset's (empty unless it was pruned)."""
    if name not in list_models():  # auxiliary training state (a GAN's discriminator), no preset
        return {}
    # Building the preset initialises weights: keep that off the global RNG, or saving a checkpoint
    # would change the rest of a training run (resume is exact only if saving draws nothing).
    with torch.random.fork_rng(devices=[]):
        preset = create_model(name, **options)
    return shape_changes(preset, model)


def build_model(meta: dict[str, Any]) -> nn.Module:
    """The checkpoint's architecture: its registered preset with the recorded layer widths."""
    model = create_model(meta["model"], **meta["model_options"])
    return apply_layer_shapes(model, meta.get("layer_shapes") or {})


def resolve_checkpoint(folder: str | Path) -> Path:
    """The folder that holds the checkpoint: ``folder``, or ``<folder>.old`` when a save was interrupted."""
    folder = Path(folder)
    if (folder / META_FILE).is_file():
        return folder
    old = folder.with_name(folder.name + ".old")
    if (old / META_FILE).is_file():  # a save was interrupted between its two renames
        return old
    raise DataError(f"{folder}: no checkpoint here (expected {META_FILE} and {MODEL_FILE})")


def weights_sha256(folder: str | Path) -> str:
    """The sha256 of a checkpoint's weights file: what a derived file (an export, a stage) was made from."""
    return hashlib.sha256((resolve_checkpoint(folder) / MODEL_FILE).read_bytes()).hexdigest()


def checkpoint_exists(folder: str | Path) -> bool:
    """Whether ``folder`` (or what an interrupted save left of it, ``<folder>.old``) holds a checkpoint."""
    try:
        resolve_checkpoint(folder)
    except DataError:
        return False
    return True


def read_metadata(folder: str | Path) -> dict[str, Any]:
    """``checkpoint.json``, checked: a JSON object naming a registered model and its options."""
    path = resolve_checkpoint(folder) / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: corrupt checkpoint metadata ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != "edgesr-checkpoint":
        raise DataError(f'{path}: not an edgesr checkpoint (no "format": "edgesr-checkpoint" object)')
    for key, kind in (("model", str), ("model_options", dict), ("config", dict), ("step", int)):
        if not isinstance(meta.get(key), kind):
            raise DataError(f"{path}: '{key}' is missing or not a {kind.__name__}")
    return meta


def _read_weights(path: Path, map_location: str | torch.device) -> dict[str, torch.Tensor]:
    """A safetensors file (never a pickle), or a DataError saying what is wrong with it."""
    if not path.is_file():
        raise DataError(f"{path}: the weights file is missing")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the weights file is empty")
    try:
        return load_file(str(path), device=str(map_location))
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        head = path.read_bytes()[:4]
        # A pickle (protocol 2-5) or torch.save's zip of pickles: named, never unpickled.
        pickled = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
        hint = " (a pickle? edgesr loads only safetensors)" if pickled or head == b"PK\x03\x04" else ""
        raise DataError(f"{path}: not a readable safetensors file{hint} ({exc})") from None


def _fit_weights(model: nn.Module, weights: dict[str, torch.Tensor], where: Path, name: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error that names a few of the mismatches."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    wrong = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong)):
        if keys:
            problems.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
    if problems:
        raise DataError(f"{where}: the weights do not fit model {name!r}: " + "; ".join(problems))
    model.load_state_dict(weights, strict=True)


def load_model(
    folder: str | Path, *, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Builds the checkpoint's model and loads its weights (strictly); returns (model, metadata)."""
    meta = read_metadata(folder)
    where = resolve_checkpoint(folder)
    if meta["model"] not in list_models():
        raise DataError(
            f"{where / META_FILE}: unknown model {meta['model']!r} (known: {', '.join(list_models())})"
        )
    try:
        model = build_model(meta)
    except (ValueError, TypeError) as exc:  # bad option values or layer widths (ConfigError included)
        raise DataError(f"{where / META_FILE}: cannot build model {meta['model']!r} ({exc})") from None
    _fit_weights(model, _read_weights(where / MODEL_FILE, map_location), where / MODEL_FILE, meta["model"])
    return model, meta


def load_weights(folder: str | Path, model: nn.Module) -> dict[str, Any]:
    """Loads a checkpoint's weights into an already built ``model`` (strictly); returns the metadata.

    For models the registry cannot rebuild on its own, such as a network with quantizers inserted.
    """
    resolved = resolve_checkpoint(folder)
    meta = read_metadata(resolved)
    _fit_weights(model, _read_weights(resolved / MODEL_FILE, "cpu"), resolved / MODEL_FILE, meta["model"])
    return meta


def load_training_state(
    folder: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restores model, optimizer, scheduler and the torch RNG; returns (metadata, extra tensors)."""
    resolved = resolve_checkpoint(folder)
    meta = read_metadata(resolved)
    _fit_weights(model, _read_weights(resolved / MODEL_FILE, "cpu"), resolved / MODEL_FILE, meta["model"])
    tensors = _read_weights(resolved / STATE_FILE, "cpu")
    if "rng.torch" not in tensors or not isinstance(meta.get("optimizer"), dict):
        raise DataError(f"{resolved}: not a training checkpoint (no optimizer state to resume from)")
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    if scheduler is not None and meta.get("scheduler") is not None:
        scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    extra = {k.removeprefix("extra."): v for k, v in tensors.items() if k.startswith("extra.")}
    return meta, extra


def read_spec(meta: dict[str, Any], source: str | Path) -> ModelSpec:
    """The checkpoint's model spec; a checkpoint written before specs existed must be upgraded once."""
    raw = meta.get("spec")
    if raw is None:
        raise DataError(
            f"{source}: this checkpoint has no model spec (it predates edgesr's model contract); "
            f"run `edgesr upgrade checkpoint={source}` once to write it from the run's recorded settings"
        )
    return ModelSpec.from_dict(raw, source=f"{source}/{META_FILE}")


def load_for_inference(
    folder: str | Path, *, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """A checkpoint's model in eval mode, its spec and metadata: what every consumer that runs it needs."""
    model, meta = load_model(folder, map_location=map_location)
    return model.eval(), read_spec(meta, folder), meta
