"""Config files: pydantic settings read from TOML, single fields overridden by flags.

The one configuration path of ralm: **model defaults -> TOML file -> command-line flags**.
Every default lives in a pydantic model (``UserModelConfig``, ``LookalikeConfig``,
``ServeConfig``...); a TOML file sets any of its fields in a table named after the model's
section (``[user]``, ``[lookalike_train]``, ``[serve]``...); a flag overrides one field.
Errors are one line naming the file, the table and the key (or the flag)::

    error: run.toml: [serve] synchronous: String should match pattern ... (got 'WHATEVER')

This module knows nothing about the command line; ``ralm.cli.options`` builds the flags
from the same models.
"""

from __future__ import annotations

import difflib
import json
import math
import textwrap
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from ralm.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

SHIPPED_DIR = "configs"  # package data folder: src/ralm/configs/*.toml


@dataclass(frozen=True)
class Section:
    """One TOML table and the settings model it validates into.

    Args:
        name: table name in a config file (``[name]``), also the attribute of the command.
        model: the pydantic model holding the fields and their defaults.
        flags: field -> flag names where they differ from ``--field-name`` (historical
            names; the first is shown first). The ``--field-name`` form is always accepted
            as well.
        skip: fields without a flag (set from elsewhere, e.g. a dimension read from the
            stage-1 model); they can still be set in the file.
        computed: fields whose default the command computes (e.g. a folder inside the run
            folder); ``dump_toml`` writes them commented out unless set explicitly.
        help: field -> help text replacing the field's description (with its default).
        envvars: field -> environment variable read when the flag is not given.
        transform: field -> function applied to a value from the file or a flag before
            validation (e.g. upper-casing an enum-like string).
    """

    name: str
    model: type[BaseModel]
    flags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    skip: frozenset[str] = frozenset()
    computed: frozenset[str] = frozenset()
    help: Mapping[str, str] = field(default_factory=dict)
    envvars: Mapping[str, str] = field(default_factory=dict)
    transform: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)


# ---------------------------------------------------------------------------- reading


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a missing file or a syntax error is a one-line ``ConfigError``."""
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from e


def split_sections(
    path: Path, raw: Mapping[str, Any], known: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """Check that ``raw`` holds only known tables and return them by name.

    Args:
        path: the file (for error messages).
        raw: parsed TOML.
        known: every table name a ralm config file may hold (tables of other commands are
            allowed, so one file can configure the whole pipeline).

    Raises:
        ConfigError: a top-level key that is not a known table, or a known name that is
            not a table.
    """
    names = list(known)
    out: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        if key not in names:
            raise ConfigError(f"{path}: unknown table [{key}]{_did_you_mean(key, names)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: {key} must be a table ([{key}]), got {value!r}")
        out[key] = value
    return out


def build_settings(
    section: Section,
    from_file: Mapping[str, Any] | None,
    overrides: Mapping[str, Any],
    *,
    path: Path | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> BaseModel:
    """Validate one section: model defaults, then the file's table, then the overrides.

    Args:
        section: the table and its model.
        from_file: the table read from the config file (None when there is no file).
        overrides: field -> value given on the command line (only fields actually given).
        path: the config file, for error messages.
        flag_names: field -> flag that set it, for error messages.

    Returns:
        The validated model; ``model_fields_set`` holds the fields given in the file or as
        flags (everything else is the model's default).

    Raises:
        ConfigError: one line naming the flag, or the file, table and key, of every bad
            value or unknown key.
    """
    file_values = dict(from_file or {})
    merged = {**file_values, **overrides}
    try:
        return section.model.model_validate(merged)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            loc = err["loc"]
            key = str(loc[0]) if loc else ""
            where = _where(section, key, loc, overrides, file_values, path, flag_names or {})
            msgs.append(f"{where}: {_message(err, section)}")
        raise ConfigError("; ".join(msgs)) from e


def _where(
    section: Section,
    key: str,
    loc: tuple[Any, ...],
    overrides: Mapping[str, Any],
    file_values: Mapping[str, Any],
    path: Path | None,
    flag_names: Mapping[str, str],
) -> str:
    dotted = ".".join(str(x) for x in loc)
    if key in overrides:
        return flag_names.get(key, f"--{key.replace('_', '-')}")
    if key in file_values:
        return f"{path}: [{section.name}] {dotted}"
    sources = [str(path)] if path is not None else []
    if overrides:
        sources.append("flags " + ", ".join(flag_names.get(k, k) for k in overrides))
    return f"[{section.name}] (from {' and '.join(sources)})" if sources else f"[{section.name}]"


def _message(err: Any, section: Section) -> str:
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        return f"unknown key {key!r}{_did_you_mean(key, list(section.model.model_fields))}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["loc"] and "input" in err:
        got = repr(err["input"])
        msg += f" (got {got[:60] + '...' if len(got) > 60 else got})"
    return msg


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---------------------------------------------------------------------------- fields


def field_default(info: FieldInfo) -> Any:
    """The default of a model field (calling its factory), or ``PydanticUndefined``."""
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return info.default


def format_value(value: Any) -> str:
    """A default as a user would type it (``128``, ``attention``, ``[256]``, ``none``)."""
    if value is None or value is PydanticUndefined:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def scalar_kind(annotation: Any) -> tuple[str, type | None, tuple[Any, ...]] | None:
    """What a flag for this field annotation looks like.

    Returns:
        ``(kind, base, choices)`` with kind ``"bool"``, ``"scalar"`` or ``"list"`` (a
        repeatable flag), the element type and the Literal choices; ``None`` for fields a
        flag cannot express (nested models, tuples, dicts): those are set in the file.
    """
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return scalar_kind(rest[0]) if len(rest) == 1 else None
    if origin is list and len(args) == 1:
        inner = scalar_kind(args[0])
        return ("list", inner[1], inner[2]) if inner and inner[0] == "scalar" else None
    if origin is Literal:
        return ("scalar", type(args[0]), args)
    if annotation is bool:
        return ("bool", bool, ())
    if annotation in (int, float, str, Path):
        return ("scalar", annotation, ())
    return None


# ---------------------------------------------------------------------------- writing


def dump_toml(entries: Sequence[tuple[Section, BaseModel]], *, header: str = "") -> str:
    """Write settings as a commented TOML file that :func:`build_settings` reads back.

    Args:
        entries: (section, its settings) pairs, one table each.
        header: comment lines put at the top.

    Returns:
        TOML text: one table per entry, each key preceded by its description as a comment.
        ``None`` values (TOML has no null) and the ``computed`` fields of a section that
        were not set explicitly are written commented out, so reading the text back gives
        the same settings.
    """
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for section, model in entries:
        if lines:
            lines.append("")
        lines.append(f"[{section.name}]")
        for key, info in type(model).model_fields.items():
            if info.description:
                lines += [f"# {line}" for line in textwrap.wrap(info.description, 88)]
            value = getattr(model, key)
            if value is None:
                lines.append(f"# {key} =   (unset)")
            elif key in section.computed and key not in model.model_fields_set:
                note = section.help.get(key, "set by the command")
                lines.append(f"# {key} =   ({note})")
            else:
                lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")


# ---------------------------------------------------------------------------- shipped files


def shipped_configs() -> dict[str, Path]:
    """The TOML configs shipped in the package (``ralm/configs/*.toml``) by name."""
    folder = Path(str(resources.files("ralm").joinpath(SHIPPED_DIR)))
    return {p.stem: p for p in sorted(folder.glob("*.toml"))}


def resolve_config(name_or_path: str | Path) -> Path:
    """A config file given as a path, or the name of a shipped config.

    ``experiment-ml100k-quick``, ``experiment-ml100k-quick.toml`` and the repository-era
    ``configs/experiment-ml100k-quick.toml`` all name the shipped file, wherever ralm is
    installed; an existing file is always taken as it is.

    Raises:
        ConfigError: neither an existing file nor a shipped config.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_configs()
    stem = path.name.removesuffix(".toml")
    if stem in shipped and (len(path.parts) == 1 or path.parent.name == SHIPPED_DIR):
        return shipped[stem]
    raise ConfigError(
        f"config {name_or_path} not found (no such file; shipped configs: "
        f"{', '.join(shipped) or 'none'})"
    )
