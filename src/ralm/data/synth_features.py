"""User features of the synthetic generator: partly revealing the latent group.

* ``gender``: each group has its own female rate in [0.2, 0.8].
* ``city``: with ``p_home_city`` one of the group's ``home_cities_per_group`` cities,
  else a city drawn by Zipf popularity over all ``n_cities``.
* ``age``: the group's mean age (uniform in [20, 55]) plus N(0, ``age_sd``), rounded,
  clipped to [14, 80]. ``age_bucket`` is derived from it (see ``SynthData.age_bucket``).
* ``tags``: 1 + Poisson(``mean_tags`` - 1) interest tags; with ``p_tag_signal`` a tag
  belongs to one of the user's topics (favourite or group mixture, half/half), else to a
  uniformly random topic; ``tags_per_topic`` tags per topic; duplicates removed.

A share ``missing_rate`` of users misses each of age, city and tags (independently).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ralm.data.synth_sampling import sorted_unique
from ralm.data.synth_types import GENDER_NAMES, SynthConfig


def user_features(
    cfg: SynthConfig,
    user_group: np.ndarray,
    user_topic: np.ndarray,
    group_topics: Callable[[np.ndarray, np.random.Generator], np.ndarray],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Draw (gender int8, city int64 (-1 missing), age float32 (NaN missing), tags CSR).

    Args:
        cfg: generator config.
        user_group: int64 (n_users,) latent group.
        user_topic: int64 (n_users,) favourite topic.
        group_topics: draws one topic per row from a group's mixture.
        rng: random generator.
    """
    n, g = user_group.shape[0], cfg.n_groups

    p_female = rng.uniform(0.2, 0.8, g)  # (G,)
    gender = np.where(rng.random(n) < p_female[user_group], 0, 1).astype(np.int8)
    assert len(GENDER_NAMES) == 2

    city_cdf = np.cumsum(1.0 / np.arange(1, cfg.n_cities + 1))  # Zipf(1) over cities
    city_cdf /= city_cdf[-1]
    home = rng.integers(0, cfg.n_cities, (g, cfg.home_cities_per_group))  # (G, H)
    home_city = home[user_group, rng.integers(0, cfg.home_cities_per_group, n)]  # (n,)
    any_city = np.minimum(np.searchsorted(city_cdf, rng.random(n)), cfg.n_cities - 1)
    city = np.where(rng.random(n) < cfg.p_home_city, home_city, any_city).astype(np.int64)
    city[rng.random(n) < cfg.missing_rate] = -1

    mean_age = rng.uniform(20.0, 55.0, g)  # (G,)
    age = np.clip(np.round(rng.normal(mean_age[user_group], cfg.age_sd)), 14, 80)
    age = age.astype(np.float32)
    age[rng.random(n) < cfg.missing_rate] = np.nan

    n_tags = 1 + np.asarray(rng.poisson(cfg.mean_tags - 1.0, n), dtype=np.int64)  # (n,)
    n_tags[rng.random(n) < cfg.missing_rate] = 0
    tag_user = np.repeat(np.arange(n, dtype=np.int64), n_tags)  # (nnz,)
    m = tag_user.shape[0]
    own = np.where(
        rng.random(m) < 0.5, user_topic[tag_user], group_topics(user_group[tag_user], rng)
    )
    topic = np.where(rng.random(m) < cfg.p_tag_signal, own, rng.integers(0, cfg.n_topics, m))
    k = cfg.tags_per_topic
    tag = topic * k + rng.integers(0, k, m)  # (nnz,) tag code
    vocab = cfg.n_topics * k
    uniq = sorted_unique(tag_user * vocab + tag)  # dedupe (user, tag), sorted by user
    counts = np.bincount(uniq // vocab, minlength=n)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return gender, city, age, (offsets, (uniq % vocab).astype(np.int64))
