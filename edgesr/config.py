"""Typed, frozen configurations filled from YAML and ``key=value`` overrides.

Every command and recipe is a frozen dataclass. OmegaConf does the parsing and type conversion
(``trainer.steps=200`` becomes an ``int``); this module adds what users need on top of it: an unknown
key is an error that suggests the closest valid key, a wrong value names its key, and ``describe``
lists every key with its default and help for ``--help``.

Example:
    >>> @dataclass(frozen=True)
    ... class Cfg:
    ...     scale: int = opt(2, "upsampling factor")
    >>> parse_overrides(Cfg, ["scale=4"]).scale
    4
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from edgesr.errors import ConfigError

T = TypeVar("T")


def opt(default: Any, help: str) -> Any:
    """A dataclass field with a default and a one-line help text shown by ``edgesr CMD --help``."""
    if dataclasses.is_dataclass(default) or isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def check_choice(key: str, value: Any, choices: Iterable[Any]) -> None:
    """Raises a :class:`ConfigError` naming ``key`` when ``value`` is not one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of {', '.join(map(str, choices))}")


def check_exactly_one(given: Mapping[str, Any], *, hints: Mapping[str, str] | None = None) -> None:
    """Raises a :class:`ConfigError` unless exactly one of the keys of ``given`` has a value.

    For commands that take their model from one of several keys (``model=``, ``checkpoint=``,
    ``artifact=``...). The message lists the keys in ``given``'s order, with a hint after a key (the
    shipped models after ``model=``) and what was given, e.g. ``give exactly one of model= (shipped:
    rdn-mr-x2, ...), checkpoint= or artifact=; got model= and artifact=``.
    """
    chosen = [key for key, value in given.items() if value]
    if len(chosen) == 1:
        return
    names = [f"{key}=" + (f" ({hints[key]})" if hints and key in hints else "") for key in given]
    options = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
    got = " and ".join(f"{key}=" for key in chosen) if chosen else "none of them"
    raise ConfigError(f"give exactly one of {options}; got {got}")


def check_range(key: str, value: float, *, low: float | None = None, high: float | None = None) -> None:
    """Raises a :class:`ConfigError` naming ``key`` when ``value`` lies outside ``[low, high]``."""
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ConfigError(f"{key}={value!r} is out of range {bounds}")


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    key: str
    type: str
    default: Any
    help: str


def describe(cls: type, prefix: str = "") -> list[KeyInfo]:
    """Every (dotted) key of a config dataclass with its type, default and help, in declaration order."""
    rows: list[KeyInfo] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            rows.extend(describe(typing.cast(type, hint), prefix=f"{key}."))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        type_name = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
        rows.append(KeyInfo(key, type_name, default, f.metadata.get("help", "")))
    return rows


def _set_path(tree: Any, key: str, value: Any) -> None:
    """``tree[a][0][b] = value`` for ``key == "a.0.b"``; an index past a list's end is a ConfigError."""
    parts = key.split(".")
    node = tree
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            index = int(part) if part.isdigit() else -1
            if not 0 <= index < len(node):
                where = ".".join(parts[:depth])
                raise ConfigError(f"{key}: {where} has {len(node)} item(s); there is no item {part}")
            if last:
                node[index] = value
            else:
                node = node[index]
        elif last:
            node[part] = value
        else:
            node = node.setdefault(part, {})


def _list_item_class(cls: type, name: str) -> type | None:
    """The dataclass of the items of ``cls``'s list field ``name`` (``stages: list[Stage]``), if any."""
    hint = typing.get_type_hints(cls).get(name)
    if typing.get_origin(hint) in (list, tuple):
        args = typing.get_args(hint)
        if args and dataclasses.is_dataclass(args[0]):
            return typing.cast(type, args[0])
    return None


def _is_valid_key(cls: type, key: str) -> bool:
    """A leaf key, a nested dataclass given whole (``trainer={...}``), a list item's key by index
    (``stages.1.ratio``, validated against the item's dataclass), or a key inside a mapping field
    (``stages.0.student_options.iterations``)."""
    valid = {row.key for row in describe(cls)}
    if key in valid or any(v.startswith(key + ".") for v in valid):
        return True
    head, _, rest = key.partition(".")
    item_class = _list_item_class(cls, head) if dataclasses.is_dataclass(cls) else None
    index, _, item_key = rest.partition(".")
    if item_class is not None and index.isdigit():
        return not item_key or _is_valid_key(item_class, item_key)
    nested = typing.get_type_hints(cls).get(head) if dataclasses.is_dataclass(cls) else None
    if rest and typing.get_origin(nested) is dict:
        # A key inside a free-form mapping (stages.0.student_options.iterations): its consumer checks it.
        return True
    return bool(rest) and dataclasses.is_dataclass(nested) and _is_valid_key(typing.cast(type, nested), rest)


def _unknown_key_error(cls: type, key: str, where: str) -> ConfigError:
    valid = [row.key for row in describe(cls)]
    head, _, rest = key.partition(".")
    index, _, _ = rest.partition(".")
    item_class = _list_item_class(cls, head) if dataclasses.is_dataclass(cls) else None
    if item_class is not None and index.isdigit():  # stages.0.stepz: the keys of a stage, not the recipe
        valid = [f"{head}.{index}.{row.key}" for row in describe(item_class)]
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown key '{key}'{where}{hint}")


def _split_override(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"argument '{item}' is not of the form key=value")
    return key.strip(), value


def parse_overrides(
    cls: type[T],
    overrides: Sequence[str] = (),
    *,
    base: Mapping[str, Any] | None = None,
    source: str | None = None,
) -> T:
    """Builds a frozen ``cls`` from its defaults, then ``base`` (e.g. a YAML file), then ``overrides``.

    Args:
        cls: a (frozen) dataclass whose fields all have defaults.
        overrides: ``key=value`` strings; dotted keys reach nested dataclasses.
        base: a mapping merged before the overrides (e.g. a loaded recipe).
        source: where ``base`` came from, named in error messages (a file path).

    Raises:
        ConfigError: for an unknown key (with the closest valid key), a value of the wrong type, or a
            value that the dataclass's ``__post_init__`` rejects.
    """
    pairs = [_split_override(item) for item in overrides]
    for key, _ in pairs:
        if not _is_valid_key(cls, key):
            raise _unknown_key_error(cls, key, "")
    schema = OmegaConf.structured(cls)
    OmegaConf.set_readonly(schema, False)  # frozen dataclasses come back read-only; we merge into a copy
    where = f" in {source}" if source else ""
    if base is not None and pairs:
        # The file's keys and types alone first: its own mistakes name the file, and a value of the wrong
        # type that fails after is the command line's. (Checks across fields come after the overrides,
        # which may complete the file: steps: 0 in the file, student_init=teacher given.)
        try:
            OmegaConf.merge(schema, OmegaConf.create(dict(base)))
        except OmegaConfBaseException:
            parse_overrides(cls, (), base=base, source=source)  # raises, naming the file
        where = " (set on the command line)"
    merged = schema
    try:
        if base is not None:
            merged = OmegaConf.merge(merged, OmegaConf.create(dict(base)))
        # A dotlist turns ``stages.0.steps`` into a mapping with key "0", which cannot merge into a
        # list: such keys are set in place instead, after the rest.
        indexed = [(k, v) for k, v in pairs if any(part.isdigit() for part in k.split("."))]
        plain = [(k, v) for k, v in pairs if (k, v) not in indexed]
        if plain:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([f"{k}={v}" for k, v in plain]))
        if indexed:
            # Structured list items are read-only nodes: set the values on plain containers, then
            # validate the result against the schema again (types, unknown keys, __post_init__).
            plain_tree = OmegaConf.to_container(merged)
            for key, value in indexed:
                _set_path(plain_tree, key, OmegaConf.from_dotlist([f"value={value}"])["value"])
            merged = OmegaConf.merge(schema, OmegaConf.create(plain_tree))
        return typing.cast(T, OmegaConf.to_object(merged))
    except OmegaConfBaseException as exc:
        full_key = getattr(exc, "full_key", None) or "?"
        # OmegaConf names a list item's key relative to the item (``steps`` for stages.0.steps): the
        # override it came from is named whole.
        dotted = re.sub(r"\[(\d+)\]", r".\1", str(full_key))
        given = [k for k, _ in pairs if k == dotted or k.endswith("." + dotted) or k.startswith(dotted + ".")]
        if given:
            full_key = given[0]
        if type(exc).__name__ == "ConfigKeyError":
            full_key = _key_in_list_item(cls, base, str(full_key))
            raise _unknown_key_error(cls, full_key, where) from None
        message = str(exc).splitlines()[0]
        if message.startswith("Incompatible value 'None'"):  # `key=` with nothing after the '='
            message = "it is empty; give a value after the '='"
        elif "is not a TupleConfig, ListConfig, list, or tuple" in message:  # `scales=2`, `a=x,y`
            given_value = next((v for k, v in pairs if k == full_key), None)
            shown = f"; got {given_value}" if given_value is not None else ""
            message = f"it takes a list, written in brackets: {full_key}=[a,b]{shown}"
        raise ConfigError(f"bad value for '{full_key}'{where}: {message}") from None
    except ConfigError as exc:
        if where.startswith(" in ") and where not in str(exc):  # a file's own value: name the file
            exc = ConfigError(f"{exc}{where}")
        raise _name_the_item(cls, merged, exc) from None
    except (ValueError, TypeError) as exc:  # raised by a dataclass __post_init__
        raise _name_the_item(cls, merged, ConfigError(f"{exc}{where}")) from None


def _key_in_list_item(cls: type, base: Mapping[str, Any] | None, key: str) -> str:
    """``stages.1.stepz`` for the unknown key ``stepz`` that OmegaConf reports relative to a list item
    of a file (``stages: [{...}, {stepz: 5}]``), so that the error names the item and suggests from its
    keys; ``key`` itself when it is no item's key."""
    if "." in key or not isinstance(base, Mapping):
        return key
    for field in dataclasses.fields(cls):
        item_class = _list_item_class(cls, field.name)
        items = base.get(field.name)
        if item_class is None or not isinstance(items, list):
            continue
        for index, item in enumerate(items):
            if isinstance(item, Mapping) and key in item and not _is_valid_key(item_class, key):
                return f"{field.name}.{index}.{key}"
    return key


def _name_the_item(cls: type, merged: Any, error: ConfigError) -> ConfigError:
    """``error`` with the index of the list item it is about: a list item's own checks
    (``Stage.__post_init__``) name their keys ``stages.KEY`` without knowing their index, so the first
    item that fails alone gives it (``stages.1.importance``)."""
    message = str(error)
    for field in dataclasses.fields(cls):
        item_class = _list_item_class(cls, field.name)
        unindexed = re.compile(rf"\b{re.escape(field.name)}\.(?!\d)")
        if item_class is None or not unindexed.search(message):
            continue
        try:
            items = OmegaConf.to_container(merged).get(field.name) or []  # type: ignore[union-attr]
        except OmegaConfBaseException:
            return error
        for index, item in enumerate(items):
            try:
                OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(item_class), item))
            except (ConfigError, ValueError, TypeError, OmegaConfBaseException):
                return ConfigError(unindexed.sub(f"{field.name}.{index}.", message))
    return error


def load_yaml(cls: type[T], path: str | Path, overrides: Sequence[str] = ()) -> T:
    """Loads a YAML file into ``cls`` (unknown keys are errors), then applies ``overrides``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as exc:  # a YAML syntax error: say which file
        raise ConfigError(f"cannot parse {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values, not {type(raw).__name__}")
    if not raw:  # an empty file is a mistake, not a request for every default (a 3-hour default run)
        raise ConfigError(f"{path} is empty: it must set at least one key")
    return parse_overrides(cls, overrides, base=typing.cast(dict[str, Any], raw), source=str(path))


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML, to be written next to a run's outputs."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
