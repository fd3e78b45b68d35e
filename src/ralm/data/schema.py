"""The dataset description file (TOML), validated by pydantic.

A dataset is a folder of CSV/Parquet tables plus one TOML file that says which table is
which, how the standard columns are named and which user fields to build::

    [dataset]
    name = "mydata"
    [files]                                   # relative to the TOML file; .csv or .parquet
    interactions = "interactions.parquet"     # required: user_id, item_id, timestamp[, label]
    users = "users.parquet"                   # optional: user_id + feature columns
    items = "items.parquet"                   # optional: item_id + attribute columns
    test_interactions = "test.parquet"        # optional: only for the `given` split
    valid_interactions = "valid.parquet"      # optional: VALID (valid_from = given-file)
    [columns]                                 # optional renames (defaults shown)
    user_id = "user_id"
    item_id = "item_id"
    timestamp = "timestamp"
    label = "label"
    [[fields]]
    name = "gender"
    kind = "univalent"                        # univalent | multivalent | continuous
    [[derived]]
    name = "history"
    source = "item_id"                        # item-ID history (item_history=True)
    [[derived]]
    name = "genres"
    source = "item:genre"                     # an items-table column

See ``docs/DATA.md`` for the full reference.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ralm.errors import ConfigError

FieldKind = Literal["univalent", "multivalent", "continuous"]
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_RESERVED = {"continuous"}  # features/continuous.npy holds the continuous matrix
TABLE_ROLES = ("interactions", "users", "items", "test_interactions", "valid_interactions")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetInfo(_Strict):
    """The ``[dataset]`` table.

    Args:
        name: dataset name, stored in the encoded artifact.
    """

    name: str = Field(min_length=1, description="Dataset name stored in the artifact.")


class FilesSpec(_Strict):
    """The ``[files]`` table: paths relative to the TOML file (.csv or .parquet).

    Args:
        interactions: the event table (required).
        users: optional user table (user_id + feature columns).
        items: optional item table (item_id + attribute columns for derived fields).
        test_interactions: optional test events, used by the ``given`` split.
        valid_interactions: optional validation events (``valid_from`` = ``given-file``).
    """

    interactions: str = Field(description="Event table: user_id, item_id, timestamp[, label].")
    users: str | None = Field(default=None, description="User table: user_id + feature columns.")
    items: str | None = Field(default=None, description="Item table: item_id + attribute columns.")
    test_interactions: str | None = Field(
        default=None, description="Held-out test events (the `given` split puts them in TEST)."
    )
    valid_interactions: str | None = Field(
        default=None,
        description="Validation events (VALID with valid_from 'given-file' or 'auto').",
    )


class ColumnsSpec(_Strict):
    """The ``[columns]`` table: names of the standard columns in the files.

    Args:
        user_id: user id column (interactions and users tables).
        item_id: item id column (interactions and items tables).
        timestamp: event time, int unix seconds or ISO-8601 strings.
        label: optional click label; rows with label 0 are explicit non-clicks.
    """

    user_id: str = Field(default="user_id", description="User id column.")
    item_id: str = Field(default="item_id", description="Item id column.")
    timestamp: str = Field(default="timestamp", description="Unix seconds or ISO-8601 strings.")
    label: str = Field(default="label", description="Optional label column (absent = all clicks).")


class FieldSpec(_Strict):
    """One user feature read from the users table.

    Args:
        name: field name (letters, digits, ``_``, ``-``).
        kind: ``univalent`` | ``multivalent`` | ``continuous``.
        column: source column (defaults to ``name``).
        separator: separator of multivalent values in CSV cells (``a|b|c``).
        non_finite: continuous only: ``error`` (default) rejects NaN, +-inf and numbers
            beyond float64 with a DataError naming file, row and column; ``missing``
            treats them as missing values (normalised to 0, like an empty cell).
    """

    name: str = Field(description="Field name.")
    kind: FieldKind = Field(description="univalent | multivalent | continuous.")
    column: str | None = Field(default=None, description="Source column in the users table.")
    separator: str = Field(default="|", min_length=1, description="CSV multivalent separator.")
    non_finite: Literal["error", "missing"] = Field(
        default="error",
        description="Continuous fields: 'error' rejects NaN/inf/overflow, 'missing' treats "
        "them as missing (-> 0).",
    )

    @property
    def source_column(self) -> str:
        return self.column or self.name


class DerivedSpec(_Strict):
    """A multivalent user field computed from the user's TRAIN-split clicks.

    Args:
        name: field name.
        source: ``item_id`` (the item-ID history, ``item_history=True``) or
            ``item:<column>`` (the values of an items-table column over clicked items).
        separator: separator of multi-valued item attributes in CSV cells.
    """

    name: str = Field(description="Field name.")
    source: str = Field(description="'item_id' or 'item:<items-table column>'.")
    separator: str = Field(default="|", min_length=1, description="CSV multivalent separator.")

    @property
    def is_history(self) -> bool:
        return self.source == "item_id"

    @property
    def item_column(self) -> str:
        return self.source.split(":", 1)[1]


class DatasetSchema(_Strict):
    """A validated dataset description (see module docstring).

    Args:
        dataset: the ``[dataset]`` table.
        files: the ``[files]`` table.
        columns: the ``[columns]`` table.
        fields: user feature fields read from the users table.
        derived: multivalent fields derived from TRAIN history.
        base_dir: folder the file paths are relative to (the TOML's folder).
    """

    dataset: DatasetInfo
    files: FilesSpec
    columns: ColumnsSpec = Field(default_factory=ColumnsSpec)
    fields: list[FieldSpec] = Field(default_factory=list)
    derived: list[DerivedSpec] = Field(default_factory=list)
    base_dir: Path = Field(default=Path("."), exclude=True, description="Folder of the TOML file.")

    @model_validator(mode="after")
    def _check(self) -> DatasetSchema:
        names = [f.name for f in self.fields] + [d.name for d in self.derived]
        seen: set[str] = set()
        for n in names:
            if not _NAME_RE.match(n):
                raise ValueError(f"field name {n!r} must match {_NAME_RE.pattern}")
            if n in _RESERVED:
                raise ValueError(f"field name {n!r} is reserved")
            if n in seen:
                raise ValueError(f"duplicate field name {n!r}")
            seen.add(n)
        if sum(d.is_history for d in self.derived) > 1:
            raise ValueError("at most one derived field may have source = 'item_id'")
        for d in self.derived:
            if d.is_history:
                continue
            if not d.source.startswith("item:") or not d.item_column:
                raise ValueError(
                    f"derived field {d.name!r}: source must be 'item_id' or "
                    f"'item:<column>', got {d.source!r}"
                )
            if self.files.items is None:
                raise ValueError(
                    f"derived field {d.name!r} reads items-table column {d.item_column!r} "
                    "but [files] has no `items` table"
                )
        if self.fields and self.files.users is None:
            raise ValueError(
                f"fields {[f.name for f in self.fields]} need a users table ([files] users)"
            )
        return self

    def path(self, role: str) -> Path | None:
        """Absolute path of the file of ``role`` (interactions/users/items/...), or None."""
        rel = getattr(self.files, role)
        return None if rel is None else (self.base_dir / rel).resolve()


def _format_validation(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in err["loc"])
        parts.append(f"{loc.replace('.[', '[') or '<root>'}: {err['msg']}")
    return "; ".join(parts)


def schema_from_dict(
    data: dict[str, Any], base_dir: Path | str = ".", origin: str = "<dict>"
) -> DatasetSchema:
    """Validate a parsed description. Raises :class:`ConfigError` naming ``origin``."""
    try:
        return DatasetSchema.model_validate({**data, "base_dir": Path(base_dir)})
    except ValidationError as e:
        raise ConfigError(f"{origin}: invalid dataset description: {_format_validation(e)}") from e


def load_schema(path: str | Path, check_files: bool = True) -> DatasetSchema:
    """Read and validate a dataset TOML file.

    Args:
        path: the TOML file.
        check_files: also check that every referenced file exists.

    Raises:
        ConfigError: unreadable TOML, unknown keys or kinds, duplicate fields, missing files.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"dataset description {p} does not exist")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from e
    schema = schema_from_dict(data, p.parent, origin=str(p))
    if check_files:
        for role in TABLE_ROLES:
            f = schema.path(role)
            if f is None:
                continue
            if not f.is_file():
                raise ConfigError(f"{p}: [files] {role} = {f} does not exist")
            if f.suffix.lower() not in (".csv", ".parquet", ".pq"):
                raise ConfigError(f"{p}: [files] {role} = {f}: expected a .csv or .parquet file")
    return schema
