"""Dataset TOML validation: clear errors for every kind of mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
from generic_fixture import TOML, write_tiny

from ralm.data.schema import load_schema
from ralm.errors import ConfigError


def test_valid_schema(tmp_path: Path) -> None:
    s = load_schema(write_tiny(tmp_path))
    assert s.dataset.name == "tiny"
    assert [f.kind for f in s.fields] == ["univalent", "multivalent", "continuous"]
    assert [d.is_history for d in s.derived] == [False, True]
    assert s.derived[0].item_column == "genre"
    assert s.path("users") == (tmp_path / "users.csv").resolve()
    assert s.columns.timestamp == "timestamp"


def _write(tmp_path: Path, text: str) -> Path:
    write_tiny(tmp_path)
    p = tmp_path / "bad.toml"
    p.write_text(text)
    return p


BASE = TOML.format(ext="csv")


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (BASE.replace('kind = "univalent"', 'kind = "categorical"'), r"fields\[0\]\.kind"),
        (BASE.replace('name = "tags"', 'name = "gender"'), "duplicate field name 'gender'"),
        (BASE.replace('source = "item:genre"', 'source = "user:x"'), "source must be"),
        (BASE.replace('users = "users.csv"', 'users = "nope.csv"'), r"users = .*nope.csv does"),
        (BASE.replace("[dataset]", "[dataset]\nnmae = 1"), r"dataset\.nmae: Extra inputs"),
        (BASE.replace('name = "age"', 'name = "continuous"'), "reserved"),
        (BASE.replace('name = "age"', 'name = "a/b"'), "must match"),
        (BASE + '[[derived]]\nname = "h2"\nsource = "item_id"\n', "at most one"),
        (BASE.replace('items = "items.csv"\n', ""), "has no `items` table"),
        (BASE.replace('users = "users.csv"\n', ""), "need a users table"),
        (BASE.replace("[files]", "[files\n"), "not valid TOML"),
        (BASE.replace('interactions = "interactions.csv"', 'interactions = "x.json"'), "does not"),
    ],
)
def test_schema_errors(tmp_path: Path, text: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_schema(_write(tmp_path, text))


def test_wrong_extension(tmp_path: Path) -> None:
    write_tiny(tmp_path)
    (tmp_path / "x.json").write_text("{}")
    p = tmp_path / "bad.toml"
    p.write_text(BASE.replace('interactions = "interactions.csv"', 'interactions = "x.json"'))
    with pytest.raises(ConfigError, match=r"expected a .csv or .parquet"):
        load_schema(p)


def test_missing_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_schema(tmp_path / "none.toml")


def test_example_config_in_the_repo_is_valid() -> None:
    import tomllib

    from ralm.data.schema import schema_from_dict

    path = Path(__file__).parents[2] / "src/ralm/configs" / "dataset.example.toml"
    s = schema_from_dict(tomllib.loads(path.read_text()), path.parent, str(path))
    assert [f.source_column for f in s.fields] == ["gender", "tags", "age"]
