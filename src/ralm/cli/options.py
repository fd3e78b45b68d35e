"""Flags derived from the settings models: one default, written once, in the model.

``@with_settings(section, ...)`` turns a command function whose parameters include one
argument per section (``user: UserModelConfig``) into a typer command that has

* ``--config FILE`` (a TOML file, or the name of a shipped config), and
* one flag per field of each section's model, named ``--field-name`` (plus the historical
  names of ``Section.flags``), whose help is the field's description and default.

A flag left out is "not given" (``None``), so the value comes from the file, else from the
model's default. The command receives the validated models. Values are parsed by pydantic
(not by click), so a bad value is the same one-line ``ConfigError`` whether it came from a
flag or from the file.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel
from pydantic_core import PydanticUndefined
from rich.markup import escape

from ralm.config_files import (
    Section,
    build_settings,
    field_default,
    format_value,
    read_toml,
    resolve_config,
    scalar_kind,
    split_sections,
)

# Every table a ralm config file may hold; one file can configure the whole pipeline.
KNOWN_TABLES = ("user", "user_train", "lookalike", "lookalike_train", "serve", "listen")

CONFIG_HELP = (
    "TOML file (or the name of a shipped config) with the tables {tables}; flags override "
    "single fields. Start one with `ralm config show`."
)
_METAVARS = {int: "INT", float: "FLOAT", str: "TEXT", Path: "PATH"}


@dataclass(frozen=True)
class DerivedFlag:
    """One flag built from one model field."""

    section: Section
    field: str
    param: str  # python parameter name in the command's signature
    flag: str  # primary flag name, e.g. --negatives
    is_list: bool


def help_text(section: Section, name: str) -> str:
    """The help of a field's flag: its description (or ``section.help``) and its default."""
    info = section.model.model_fields[name]
    text = section.help.get(name) or info.description or name
    default = field_default(info)
    if default is PydanticUndefined or name in section.computed:
        return text  # a computed default is described by section.help
    shown = format_value(default)
    return f"{text} [default: {shown}]"


def _decls(section: Section, name: str, is_bool: bool) -> list[str]:
    names = [*section.flags.get(name, ()), "--" + name.replace("_", "-")]
    names = list(dict.fromkeys(names))
    if is_bool:
        return [f"{n}/--no-{n.removeprefix('--')}" for n in names]
    return names


def derive_flags(
    sections: Sequence[Section], taken: set[str], *, tables: bool = True
) -> tuple[list[DerivedFlag], list[inspect.Parameter]]:
    """The flags (and signature parameters) of every flag-able field of ``sections``.

    Args:
        sections: the command's sections.
        taken: flag names already used by the command's own options.
        tables: the sections are tables of a config file (named so in the help).

    Raises:
        ValueError: two fields (or a field and an own option) would share a flag name; this
            is a programming error caught when the command is built.
    """
    flags: list[DerivedFlag] = []
    params: list[inspect.Parameter] = []
    used = set(taken)
    for section in sections:
        title = f"[{section.name}]" if tables else section.name
        panel = escape(f"{title} settings ({section.model.__name__})")
        for name, info in section.model.model_fields.items():
            kind = scalar_kind(info.annotation)
            if name in section.skip or kind is None:
                continue
            what, base, choices = kind
            decls = _decls(section, name, what == "bool")
            plain = {p for d in decls for p in d.split("/")}
            clash = plain & used
            if clash:
                raise ValueError(f"flag {sorted(clash)} of [{section.name}] {name} is taken")
            used |= plain
            metavar = None
            if choices:
                metavar = "[" + "|".join(str(c) for c in choices) + "]"
            elif what != "bool":
                metavar = _METAVARS.get(base or str, "TEXT")
            annotation: Any = {"bool": bool | None, "list": list[str] | None}.get(what, str | None)
            option = typer.Option(
                None,
                *decls,
                help=escape(help_text(section, name)) + (" (repeatable)" if what == "list" else ""),
                metavar=metavar,
                show_default=False,
                envvar=section.envvars.get(name),
                rich_help_panel=panel,
            )
            param = f"{section.name}__{name}"
            params.append(
                inspect.Parameter(
                    param, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation
                )
            )
            flags.append(DerivedFlag(section, name, param, decls[0].split("/")[0], what == "list"))
    return flags, params


def _own_flags(params: Sequence[inspect.Parameter]) -> set[str]:
    out: set[str] = set()
    for p in params:
        decls = getattr(p.default, "param_decls", None) or ()
        out |= {d for decl in decls for d in decl.split("/") if d.startswith("-")}
    return out


def load_sections(
    sections: Sequence[Section],
    config: str | Path | None,
    overrides: dict[str, dict[str, Any]],
    flag_names: dict[str, dict[str, str]],
) -> dict[str, BaseModel]:
    """Validate every section from defaults, the config file and the given flags."""
    path = resolve_config(config) if config is not None else None
    tables = split_sections(path, read_toml(path), KNOWN_TABLES) if path is not None else {}
    out: dict[str, BaseModel] = {}
    for s in sections:
        from_file = {k: s.transform.get(k, _same)(v) for k, v in tables.get(s.name, {}).items()}
        given = {k: s.transform.get(k, _same)(v) for k, v in overrides.get(s.name, {}).items()}
        out[s.name] = build_settings(
            s, from_file, given, path=path, flag_names=flag_names.get(s.name)
        )
    return out


def _same(value: Any) -> Any:
    return value


def with_settings(
    *sections: Section, config_file: bool = True
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command taking one argument per section (named like the section).

    The decorated function gets ``--config`` (unless ``config_file`` is false: flags only)
    and the derived flags in place of those arguments, and is called with the validated
    models.
    """
    for s in sections:
        if config_file and s.name not in KNOWN_TABLES:
            raise ValueError(f"section {s.name!r} missing from KNOWN_TABLES")

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(func, eval_str=True)
        names = {s.name for s in sections}
        own = [p for p in sig.parameters.values() if p.name not in names]
        missing = names - set(sig.parameters)
        if missing:
            raise ValueError(f"{func.__name__} has no parameter for sections {sorted(missing)}")
        taken = _own_flags(own) | {"--config", "--help"}
        flags, derived = derive_flags(sections, taken, tables=config_file)
        tables = ", ".join(f"[{s.name}]" for s in sections)
        config_param = inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                None, "--config", metavar="FILE", help=escape(CONFIG_HELP.format(tables=tables))
            ),
            annotation=str | None,
        )

        def command(**kwargs: Any) -> Any:
            config = kwargs.pop("config", None)
            overrides: dict[str, dict[str, Any]] = {s.name: {} for s in sections}
            flag_names: dict[str, dict[str, str]] = {s.name: {} for s in sections}
            for f in flags:
                value = kwargs.pop(f.param)
                if value is None or (f.is_list and not value):
                    continue
                overrides[f.section.name][f.field] = list(value) if f.is_list else value
                flag_names[f.section.name][f.field] = f.flag
            settings = load_sections(sections, config, overrides, flag_names)
            return func(**kwargs, **settings)

        params = [*own, *([config_param] if config_file else []), *derived]
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__doc__ = func.__doc__
        command.__name__ = func.__name__
        command.__qualname__ = func.__qualname__
        command.__module__ = func.__module__
        return command

    return decorate
