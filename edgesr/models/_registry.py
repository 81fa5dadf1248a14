"""The model registry: builder functions registered by name (timm's ``@register_model``, but strict).

A duplicate name raises at import; ``create_model`` rejects an unknown name (suggesting the closest)
and an unknown keyword argument (naming it), so a typo in a config never builds the wrong model.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Callable

from torch import nn

from edgesr.errors import ConfigError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_TASKS: dict[str, str] = {}


def register_model(task: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Registers a builder under its function name; ``task`` is ``"sr"`` or ``"recon"``."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = builder.__name__
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is registered twice")
        _BUILDERS[name], _TASKS[name] = builder, task
        return builder

    return decorator


def list_models(task: str | None = None) -> list[str]:
    """Registered model names, optionally only those of one task (``"sr"`` or ``"recon"``)."""
    return sorted(name for name in _BUILDERS if task is None or _TASKS[name] == task)


def model_task(name: str) -> str:
    _check_name(name)
    return _TASKS[name]


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        close = difflib.get_close_matches(name, list(_BUILDERS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(list_models())}"
        raise ConfigError(f"unknown model {name!r}{hint}")


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Builds a registered model; unknown names and keyword arguments are errors, and so are values of
    the wrong type or integer options below 1 (every integer option of a builder is a count or a size:
    unrolls, CG steps, coils, scale), so a bad option is refused before a model is built or trained."""
    _check_name(name)
    builder = _BUILDERS[name]
    accepted = inspect.signature(builder).parameters
    hints = typing.get_type_hints(builder)
    for key, value in kwargs.items():
        if key not in accepted:
            close = difflib.get_close_matches(key, list(accepted), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; accepted: {', '.join(accepted)}"
            raise ConfigError(f"model {name!r} has no option {key!r}{hint}")
        _check_option(name, key, value, hints.get(key))
    return builder(**kwargs)


def _check_option(name: str, key: str, value: object, expected: object) -> None:
    """``value`` fits the builder's annotation (int, float, bool or str); an int is at least 1."""
    if expected not in (int, float, bool, str):
        return  # another annotation: the builder checks it
    if expected is bool:
        fits = isinstance(value, bool)
    elif isinstance(value, bool):  # bool is a subclass of int, but True is not an unroll count
        fits = False
    elif expected is float:
        fits = isinstance(value, (int, float))
    else:
        fits = isinstance(value, typing.cast(type, expected))
    if not fits:
        kind = typing.cast(type, expected).__name__
        raise ConfigError(f"model {name!r}: option {key}={value!r} must be of type {kind}")
    if expected is int and typing.cast(int, value) < 1:
        raise ConfigError(f"model {name!r}: option {key}={value!r} must be at least 1")
