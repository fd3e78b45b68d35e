"""Configuration, presets and the in-memory result of the synthetic generator.

Kept apart from :mod:`ralm.data.synth` (the generator itself) so the writers
(:mod:`ralm.data.synth_parquet`, :mod:`ralm.data.synth_encode`) can import the types
without importing the generator. Public names are re-exported by :mod:`ralm.data.synth`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ralm.errors import ConfigError

DAY = 86_400
AGE_BUCKET_EDGES = (18, 25, 35, 45, 55)  # "<18", "18-24", ..., "55+"
AGE_BUCKET_NAMES = ("<18", "18-24", "25-34", "35-44", "45-54", "55+")
GENDER_NAMES = ("f", "m")


class SynthConfig(BaseModel):
    """Sizes and knobs of the planted synthetic data set (defaults = the ``small`` preset).

    Args:
        name: data set name written to ``dataset.toml`` / the encoded artifact.
        n_users: exact number of users (every user has at least one click).
        n_items: exact number of items (every item has at least one click).
        n_clicks: exact number of click rows; (user, item) pairs are unique.
        n_topics: latent item topics.
        n_groups: latent user interest groups (each a sparse mixture over topics).
        seed: RNG seed; the whole output is a function of the config.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field("synth-small", description="Data set name.")
    n_users: int = Field(50_000, ge=1, description="Exact number of users.")
    n_items: int = Field(5_000, ge=1, description="Exact number of items.")
    n_clicks: int = Field(500_000, ge=1, description="Exact number of (unique) click rows.")
    n_topics: int = Field(30, ge=1, description="Latent item topics.")
    n_groups: int = Field(20, ge=1, description="Latent user interest groups.")
    seed: int = Field(0, description="RNG seed (numpy default_rng).")

    # ---- latent interests -------------------------------------------------------------
    group_concentration: float = Field(
        0.1,
        gt=0,
        description="Dirichlet concentration of a group's topic mixture (small = peaked).",
    )
    group_size_skew: float = Field(
        0.5, ge=0, description="Group sizes proportional to 1/(g+1)^skew (0 = equal sizes)."
    )
    p_personal: float = Field(
        0.3, ge=0, le=1, description="Share of a user's clicks on their own favourite topic."
    )
    p_noise: float = Field(
        0.15, ge=0, le=1, description="Share of clicks on a topic drawn from global popularity."
    )
    topic_skew: float = Field(0.5, ge=0, description="Global topic popularity 1/(t+1)^skew.")
    zipf_exponent: float = Field(
        1.0, ge=0, description="Item popularity within a topic: 1/(rank+1)^a (rank random)."
    )

    # ---- click volume -------------------------------------------------------------------
    clicks_sigma: float = Field(
        1.0, ge=0, description="Log-normal sigma of per-user activity (heavy tail of clicks)."
    )
    max_clicks_per_user: int = Field(
        1_000, ge=1, description="Cap on clicks of one user (also capped at n_items // 4)."
    )

    # ---- time and new items ---------------------------------------------------------------
    start_ts: int = Field(1_546_300_800, description="Start of the period (unix s; 2019-01-01).")
    period_days: float = Field(30.0, gt=0, description="Length of the logged period in days.")
    new_item_frac: float = Field(
        0.1, ge=0, lt=1, description="Share of items that first appear late (natural cold items)."
    )
    new_item_start: float = Field(
        0.8,
        ge=0,
        lt=1,
        description="New items are born uniformly in [new_item_start, 0.95] x period.",
    )

    # ---- user features ----------------------------------------------------------------------
    n_cities: int = Field(100, ge=1, description="Vocabulary of the univalent `city` field.")
    p_home_city: float = Field(
        0.5, ge=0, le=1, description="Probability a user lives in one of their group's cities."
    )
    home_cities_per_group: int = Field(3, ge=1, description="Cities typical of each group.")
    age_sd: float = Field(7.0, ge=0, description="Std-dev of age around the group's mean age.")
    tags_per_topic: int = Field(4, ge=1, description="Interest tags per topic (tag vocabulary).")
    mean_tags: float = Field(3.0, ge=1, description="Mean interest tags per user.")
    p_tag_signal: float = Field(
        0.75, ge=0, le=1, description="Probability a tag comes from the user's topics (vs noise)."
    )
    missing_rate: float = Field(
        0.02,
        ge=0,
        lt=1,
        description="Share of users missing each of age, city, tags (independently).",
    )

    @property
    def period_s(self) -> int:
        return int(self.period_days * DAY)

    @property
    def click_cap(self) -> int:
        """Effective per-user cap: the config cap, at most a quarter of the catalogue."""
        return max(1, min(self.max_clicks_per_user, self.n_items // 4))

    def check(self) -> None:
        """Raise :class:`ConfigError` when the sizes cannot be satisfied together."""
        if self.n_clicks < self.n_users:
            raise ConfigError(
                f"synth config {self.name!r}: n_clicks={self.n_clicks} < n_users={self.n_users}; "
                "every user needs at least one click"
            )
        if self.n_clicks > self.n_users * self.click_cap:
            raise ConfigError(
                f"synth config {self.name!r}: n_clicks={self.n_clicks} exceeds n_users x cap "
                f"({self.n_users} x {self.click_cap}); raise n_items or max_clicks_per_user"
            )
        if self.n_clicks < self.n_items:
            raise ConfigError(
                f"synth config {self.name!r}: n_clicks={self.n_clicks} < n_items={self.n_items}; "
                "every item gets at least one click"
            )
        if self.n_items < self.n_topics:
            raise ConfigError(
                f"synth config {self.name!r}: n_items={self.n_items} < n_topics={self.n_topics}"
            )
        if self.p_personal + self.p_noise > 1:
            raise ConfigError(
                f"synth config {self.name!r}: p_personal + p_noise = "
                f"{self.p_personal + self.p_noise} > 1"
            )


PRESETS: dict[str, dict[str, Any]] = {
    # tests: a couple of seconds at most
    "tiny": dict(
        name="synth-tiny",
        n_users=2_000,
        n_items=500,
        n_clicks=20_000,
        n_topics=10,
        n_groups=8,
        n_cities=20,
        tags_per_topic=3,
        max_clicks_per_user=100,
    ),
    # examples and quick experiments
    "small": dict(name="synth-small"),
    # the paper's WeChat "Top Stories" scale (Liu et al. 2019, section 5.1)
    "wechat": dict(
        name="synth-wechat",
        n_users=2_984_724,
        n_items=43_500,
        n_clicks=8_891_670,
        n_topics=100,
        n_groups=50,
        n_cities=300,
        max_clicks_per_user=1_000,
    ),
}


def preset(name: str, **overrides: Any) -> SynthConfig:
    """The named preset (``tiny``, ``small``, ``wechat``) with optional field overrides.

    Raises:
        ConfigError: unknown preset name or invalid override.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown synth preset {name!r}; choose one of {sorted(PRESETS)}")
    try:
        cfg = SynthConfig(**{**PRESETS[name], **overrides})
    except ValidationError as e:
        raise ConfigError(f"invalid synth config for preset {name!r}: {e}") from e
    cfg.check()
    return cfg


@dataclass
class SynthData:
    """A generated data set: latent truth, raw-ish user features, items and clicks.

    User ``u`` has raw id ``str(u)``, item ``j`` raw id ``str(j)``. Categorical features
    are codes into the name tables (``-1`` = missing); clicks are sorted by timestamp.

    Args:
        config: the config that produced it.
        user_group: int64 (n_users,) latent interest group.
        user_topic: int64 (n_users,) the user's personal favourite topic.
        gender: int8 (n_users,) index into ``GENDER_NAMES``.
        city: int64 (n_users,) index into ``city_names`` or -1 (missing).
        age: float32 (n_users,) years, NaN = missing.
        tags: CSR ``(offsets int64 (n_users+1,), values int64 (nnz,))`` into ``tag_names``.
        item_topic: int64 (n_items,) latent topic (written as the item ``category``).
        item_birth_ts: int64 (n_items,) first time the item can be clicked (unix s).
        item_is_new: bool (n_items,) item first appears late in the period.
        click_user, click_item, click_ts: int64 (n_clicks,) the click log, sorted by ts.
    """

    config: SynthConfig
    user_group: np.ndarray
    user_topic: np.ndarray
    gender: np.ndarray
    city: np.ndarray
    age: np.ndarray
    tags: tuple[np.ndarray, np.ndarray]
    item_topic: np.ndarray
    item_birth_ts: np.ndarray
    item_is_new: np.ndarray
    click_user: np.ndarray
    click_item: np.ndarray
    click_ts: np.ndarray

    @property
    def n_users(self) -> int:
        return int(self.user_group.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_topic.shape[0])

    @property
    def n_clicks(self) -> int:
        return int(self.click_user.shape[0])

    @property
    def city_names(self) -> np.ndarray:
        return np.asarray([f"c{c}" for c in range(self.config.n_cities)])

    @property
    def tag_names(self) -> np.ndarray:
        k = self.config.tags_per_topic
        return np.asarray([f"t{t}_{i}" for t in range(self.config.n_topics) for i in range(k)])

    @property
    def topic_names(self) -> np.ndarray:
        return np.asarray([f"topic{t}" for t in range(self.config.n_topics)])

    def age_bucket(self) -> np.ndarray:
        """int64 (n_users,) index into ``AGE_BUCKET_NAMES``, -1 where age is missing."""
        b = np.digitize(np.nan_to_num(self.age, nan=0.0), AGE_BUCKET_EDGES).astype(np.int64)
        b[np.isnan(self.age)] = -1
        return b
