"""Commands imported only when used.

The training, serving and evaluation commands derive their flags from the settings models,
and importing ``ralm.user``, ``ralm.lookalike`` or ``ralm.evaluation`` imports torch
(seconds). A lazy group lists such a command by name with the first line of its docstring,
read from the source without importing it, and builds the real command only when it is
invoked or its own help is shown. ``ralm --help`` and ``ralm data describe`` never pay for
torch.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup


def load_command(target: str, name: str) -> Any:
    """Build the click command of ``module:function`` (a typer-style function) as ``name``."""
    module_name, attr = target.split(":")
    func = getattr(importlib.import_module(module_name), attr)
    single = typer.Typer(add_completion=False)
    single.command(name)(func)
    command = typer.main.get_command(single)
    command.name = name
    return command


def source_docstring(target: str) -> str | None:
    """The docstring of ``module:function`` read from its source file (no import)."""
    module_name, attr = target.split(":")
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        return None
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == attr:
            return ast.get_docstring(node)
    return None


class LazyCommand(TyperCommand):
    """A placeholder listing a command; parsing and running go to the real command.

    Args:
        name: command name.
        target: ``"module:function"`` of the typer-style command function.
    """

    def __init__(self, name: str, target: str) -> None:
        super().__init__(name, help=source_docstring(target))
        self.target = target
        self._real: Any = None

    def real(self) -> Any:
        """The real command (imported and built on first use)."""
        if self._real is None:
            self._real = load_command(self.target, self.name or "")
        return self._real

    def make_context(self, info_name: Any, args: Any, parent: Any = None, **extra: Any) -> Any:
        # the context (and so its .command) is the real command's: click invokes that one
        return self.real().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        return self.real().invoke(ctx)


def lazy_group(commands: Mapping[str, str]) -> type[TyperGroup]:
    """A ``TyperGroup`` class (for ``typer.Typer(cls=...)``) with lazily imported commands.

    Args:
        commands: command name -> ``"module:function"``; listed after the eager commands.
    """
    targets = dict(commands)

    class LazyTyperGroup(TyperGroup):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            for name, target in targets.items():
                self.commands.setdefault(name, LazyCommand(name, target))

    return LazyTyperGroup
