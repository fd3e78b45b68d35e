"""Commands imported only when used.

The training and serving commands derive their flags from the settings models, and
importing ``ralm.user`` or ``ralm.lookalike`` imports torch (seconds). A lazy group lists
such a command by name and builds it the first time it is invoked or its help is shown, so
``ralm data describe`` or ``ralm --help`` never pay for torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

import typer
from typer.core import TyperGroup

# typer 0.29 vendors its own click; its Command class is private, so commands are typed Any
Command = Any


def load_command(target: str, name: str) -> Command:
    """Build the click command of ``module:function`` (a typer-style function) as ``name``."""
    module_name, attr = target.split(":")
    func = getattr(importlib.import_module(module_name), attr)
    single = typer.Typer(add_completion=False)
    single.command(name)(func)
    command = typer.main.get_command(single)
    command.name = name
    return command


class LazyCommands(MutableMapping[str, Command]):
    """A command table whose lazy entries are built on first access."""

    def __init__(
        self, eager: Mapping[str, Command], lazy: Mapping[str, Callable[[], Command]]
    ) -> None:
        self._built: dict[str, Command] = dict(eager)
        self._lazy = {k: v for k, v in lazy.items() if k not in self._built}

    def __getitem__(self, name: str) -> Command:
        if name not in self._built and name in self._lazy:
            self._built[name] = self._lazy.pop(name)()
        return self._built[name]

    def __setitem__(self, name: str, command: Command) -> None:
        self._lazy.pop(name, None)
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        if name in self._lazy:
            del self._lazy[name]
        else:
            del self._built[name]

    def __iter__(self) -> Iterator[str]:
        yield from self._built
        yield from self._lazy

    def __len__(self) -> int:
        return len(self._built) + len(self._lazy)

    def __contains__(self, name: object) -> bool:
        return name in self._built or name in self._lazy


def lazy_group(commands: Mapping[str, str]) -> type[TyperGroup]:
    """A ``TyperGroup`` class (for ``typer.Typer(cls=...)``) with lazily imported commands.

    Args:
        commands: command name -> ``"module:function"``; listed after the eager commands.
    """
    targets = dict(commands)

    class LazyTyperGroup(TyperGroup):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            loaders = {n: (lambda t=t, n=n: load_command(t, n)) for n, t in targets.items()}
            self.commands = LazyCommands(self.commands, loaders)  # type: ignore[assignment]

        def list_commands(self, ctx: Any) -> list[str]:
            return list(self.commands)

    return LazyTyperGroup
