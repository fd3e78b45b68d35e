"""``ralm.config_files``: shipped configs, TOML writing, flag kinds; ``ralm config show``."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from ralm.cli import app
from ralm.cli.config import Command, command_sections
from ralm.cli.options import KNOWN_TABLES, derive_flags, load_sections
from ralm.config_files import Section, dump_toml, resolve_config, scalar_kind, shipped_configs
from ralm.errors import ConfigError
from ralm.lookalike.config import LookalikeConfig
from ralm.serve.config import ServeConfig
from ralm.user.config import UserModelConfig, UserTrainConfig

PACKAGE_CONFIGS = Path(__file__).resolve().parents[2] / "src" / "ralm" / "configs"


def test_shipped_configs_are_the_package_files() -> None:
    shipped = shipped_configs()
    assert set(shipped) == {p.stem for p in PACKAGE_CONFIGS.glob("*.toml")}
    assert {"experiment-ml100k-quick", "experiment-ml100k-full"} <= set(shipped)


@pytest.mark.parametrize(
    "name",
    [
        "experiment-ml100k-quick",
        "experiment-ml100k-quick.toml",
        "configs/experiment-ml100k-quick.toml",  # the path the docs used before the move
    ],
)
def test_resolve_shipped_names(name: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # nowhere near the repository
    assert resolve_config(name) == PACKAGE_CONFIGS / "experiment-ml100k-quick.toml"


def test_resolve_prefers_an_existing_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    own = tmp_path / "experiment-ml100k-quick.toml"
    own.write_text("name = 'mine'\n")
    assert resolve_config("experiment-ml100k-quick.toml") == Path("experiment-ml100k-quick.toml")
    with pytest.raises(ConfigError, match=r"not found.*shipped configs: .*experiment-ml100k-quick"):
        resolve_config("no-such-config")
    with pytest.raises(ConfigError, match="not found"):
        resolve_config("other/experiment-ml100k-quick.toml")  # a path: not a shipped name


def test_scalar_kinds() -> None:
    assert scalar_kind(int) == ("scalar", int, ())
    assert scalar_kind(int | None) == ("scalar", int, ())
    assert scalar_kind(bool | None) == ("bool", bool, ())
    assert scalar_kind(Literal["a", "b"]) == ("scalar", str, ("a", "b"))
    assert scalar_kind(list[int]) == ("list", int, ())
    assert scalar_kind(list[tuple[float, float]]) is None
    assert scalar_kind(dict[str, int]) is None
    assert scalar_kind(UserModelConfig) is None


def test_known_tables_are_the_command_sections() -> None:
    names = [s.name for s in command_sections(Command.all)]
    assert sorted(names) == sorted(KNOWN_TABLES)
    assert len(set(names)) == len(names)


class A(BaseModel):
    seed: int = Field(default=0, description="a")


class B(BaseModel):
    seed: int = Field(default=1, description="b")


def test_flag_clash_is_caught() -> None:
    with pytest.raises(ValueError, match="--seed"):
        derive_flags([Section("user", A), Section("serve", B)], set())
    with pytest.raises(ValueError, match="--seed"):
        derive_flags([Section("user", A)], {"--seed"})

    import typer

    from ralm.cli.options import with_settings

    def command(seed: int = typer.Option(0, "--seed"), *, user: A) -> None:
        """A command whose own option takes a field's flag."""

    with pytest.raises(ValueError, match="--seed"):
        with_settings(Section("user", A))(command)
    with pytest.raises(ValueError, match="KNOWN_TABLES"):
        with_settings(Section("no_such_table", A))(command)


@pytest.mark.parametrize("which", list(Command))
def test_config_show_reads_back_as_the_defaults(which: Command, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["config", "show", which.value])
    assert res.exit_code == 0, res.output
    tables = tomllib.loads(res.output)
    sections = command_sections(which)
    assert list(tables) == [s.name for s in sections]
    f = tmp_path / "shown.toml"
    f.write_text(res.output)
    loaded = load_sections(sections, f, {}, {})
    for s in sections:
        assert loaded[s.name] == s.model(), s.name
    if which in (Command.lookalike, Command.all):
        assert "m" not in tables["lookalike"]  # read from stage 1, never pinned by a template


def test_config_show_applies_a_file(tmp_path: Path) -> None:
    f = tmp_path / "mine.toml"
    f.write_text("[serve]\nmin_seeds = 4\nstate_dir = 'st'\ntoken = 'abc'\n")
    res = CliRunner().invoke(app, ["config", "show", "serve", "--config", str(f)])
    assert res.exit_code == 0, res.output
    serve = tomllib.loads(res.output)["serve"]
    assert (serve["min_seeds"], serve["state_dir"], serve["token"]) == (4, "st", "abc")
    assert serve["max_seeds_per_item"] == ServeConfig().max_seeds_per_item


def test_dump_round_trips_non_defaults(tmp_path: Path) -> None:
    sections = [
        Section("user", UserModelConfig),
        Section("user_train", UserTrainConfig),
        Section("lookalike", LookalikeConfig),
    ]
    values = [
        UserModelConfig(
            dim=8, mlp_hidden=[4, 2], exclude_fields=['a "quoted" näme'], sparse_grad=False
        ),
        UserTrainConfig(lr=1e-5, steps_per_epoch=3, logq_correction=False),
        LookalikeConfig(m=8, alpha=0.25, kmeans_backend="torch", seed_prior=False),
    ]
    f = tmp_path / "x.toml"
    f.write_text(dump_toml(list(zip(sections, values, strict=True)), header="two\nlines"))
    loaded = load_sections(sections, f, {}, {})
    assert [loaded[s.name] for s in sections] == values


def test_demo_resolves_its_config_before_downloading(monkeypatch, capsys) -> None:
    import ralm.data.fetch

    from .conftest import run_main

    def no_fetch(*a, **k):
        raise AssertionError("fetched before the config was found")

    monkeypatch.setattr(ralm.data.fetch, "fetch_movielens_100k", no_fetch)
    code, _, err = run_main(["demo", "--config", "no-such-experiment"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "no-such-experiment not found" in err and "experiment-ml100k-quick" in err
