"""Paper-scale synthetic data with planted structure (``ralm data synth``).

The generative story (all vectorised numpy, no per-row Python loop):

* **Topics and groups.** Items belong to one of ``n_topics`` latent topics. Users belong
  to one of ``n_groups`` latent interest groups; each group is a sparse Dirichlet mixture
  over topics, and each user also has a personal favourite topic drawn from that mixture.
* **Clicks.** Per-user click counts are heavy-tailed (log-normal activity, at least one
  click, capped) and sum exactly to ``n_clicks``. Each click picks a topic (personal
  favourite with ``p_personal``, global popularity with ``p_noise``, else the group
  mixture), then an item of that topic with Zipf popularity. (user, item) pairs are unique:
  collisions are redrawn until every user has exactly their count. Every item gets at
  least one click (from a user whose favourite topic is the item's topic).
* **Time.** Clicks are spread over ``period_days``; a share ``new_item_frac`` of items is
  born late (in ``[new_item_start, 0.95]`` of the period) and can only be clicked after
  birth. Those are the natural cold items of :func:`ralm.data.synth_encode.to_encoded`.
* **Features** partly reveal the group: gender (group-specific rate), city (a group's home
  cities with ``p_home_city``, else Zipf over all cities), age (group mean + noise; bucketed
  into ``age_bucket``), interest tags (drawn from the user's topics with ``p_tag_signal``,
  else noise). A share ``missing_rate`` of users lacks age, city and tags.

Writers: :func:`write_parquet` (the generic on-disk format that ``ralm data prepare``
ingests) and :func:`to_encoded` / :func:`write_encoded` (the fast path straight to an
:class:`~ralm.data.encoded.EncodedDataset`).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from ralm.data.synth_encode import split_synth, to_encoded, write_encoded
from ralm.data.synth_features import user_features
from ralm.data.synth_parquet import write_parquet
from ralm.data.synth_sampling import (
    cover_items,
    draw_rows,
    heavy_tailed_counts,
    segment_keys,
    unique_clicks,
)
from ralm.data.synth_types import PRESETS, SynthConfig, SynthData, preset

log = logging.getLogger(__name__)

__all__ = [
    "PRESETS",
    "SynthConfig",
    "SynthData",
    "generate",
    "preset",
    "split_synth",
    "to_encoded",
    "write_encoded",
    "write_parquet",
]


def _zipf(n: int, a: float) -> np.ndarray:
    """Normalised Zipf weights 1/(r+1)^a, float64 (n,)."""
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** a
    return w / w.sum()


class _Latent:
    """Topic/group structure shared by clicks and features (internal)."""

    def __init__(self, cfg: SynthConfig, rng: np.random.Generator) -> None:
        t, g = cfg.n_topics, cfg.n_groups
        self.topic_pop = _zipf(t, cfg.topic_skew)  # (T,)
        mix = rng.dirichlet(np.full(t, cfg.group_concentration), size=g) + 1e-12  # (G, T)
        self.group_topic = mix / mix.sum(axis=1, keepdims=True)  # (G, T)
        self.group_keys = segment_keys(self.group_topic)  # (G*T,)
        self.group_w = _zipf(g, cfg.group_size_skew)  # (G,)

    def group_topics(self, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One topic per row from the row's group mixture, int64 (n,)."""
        return draw_rows(self.group_keys, groups, self.group_topic.shape[1], rng)

    def click_topics(
        self,
        cfg: SynthConfig,
        groups: np.ndarray,
        personal: np.ndarray,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Topic of each click: personal favourite / global noise / group mixture."""
        r = rng.random(groups.shape[0])  # (n,)
        topic = self.group_topics(groups, rng)  # (n,)
        noise = np.searchsorted(np.cumsum(self.topic_pop), rng.random(groups.shape[0]))
        noise = np.minimum(noise, cfg.n_topics - 1)
        topic = np.where(r < cfg.p_personal + cfg.p_noise, noise, topic)
        return np.where(r < cfg.p_personal, personal, topic)


class _Catalogue:
    """Items: topics, Zipf popularity within topic, birth times (internal)."""

    def __init__(self, cfg: SynthConfig, rng: np.random.Generator) -> None:
        n, t = cfg.n_items, cfg.n_topics
        self.topic = rng.permutation(np.arange(n, dtype=np.int64) % t)  # (n_items,)
        perm = rng.permutation(n)
        self.order = perm[np.argsort(self.topic[perm], kind="stable")]  # items grouped by topic
        sizes = np.bincount(self.topic, minlength=t)  # (T,)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])  # (T,)
        rank = np.arange(n) - np.repeat(starts, sizes)  # within-topic popularity rank
        w = 1.0 / (rank + 1.0) ** cfg.zipf_exponent  # (n_items,) in topic order
        cs = np.cumsum(w)
        seg_end = cs[starts + sizes - 1]  # (T,) cumsum at the end of each segment
        before = np.concatenate([[0.0], seg_end[:-1]])  # (T,) cumsum before each segment
        cdf = (cs - np.repeat(before, sizes)) / np.repeat(seg_end - before, sizes)
        self.keys = np.repeat(np.arange(t, dtype=np.float64), sizes) + cdf  # (n_items,)
        self.keys[starts + sizes - 1] = np.arange(1, t + 1, dtype=np.float64)
        self.starts, self.sizes = starts, sizes

        n_new = round(cfg.new_item_frac * n)
        self.is_new = np.zeros(n, dtype=bool)
        self.is_new[rng.choice(n, n_new, replace=False)] = True
        lo, hi = cfg.new_item_start * cfg.period_s, 0.95 * cfg.period_s
        birth_off = np.zeros(n, dtype=np.int64)
        birth_off[self.is_new] = (lo + rng.random(n_new) * (hi - lo)).astype(np.int64)
        self.birth_off = birth_off  # (n_items,) seconds after start

    def items_of(self, topics: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One item per topic with Zipf popularity inside the topic, int64 (n,)."""
        pos = np.searchsorted(self.keys, topics + rng.random(topics.shape[0]), side="right")
        pos = np.minimum(pos, self.starts[topics] + self.sizes[topics] - 1)
        return self.order[pos]


def generate(cfg: SynthConfig) -> SynthData:
    """Generate a synthetic data set with planted structure. Deterministic in ``cfg``.

    Args:
        cfg: sizes and knobs, e.g. ``preset("wechat")``.

    Returns:
        :class:`SynthData` with exactly ``cfg.n_users`` users, ``cfg.n_items`` items and
        ``cfg.n_clicks`` unique (user, item) clicks sorted by timestamp.
    """
    cfg.check()
    t0 = time.perf_counter()
    streams = np.random.SeedSequence(cfg.seed).spawn(5)
    r_latent, r_items, r_clicks, r_time, r_feat = (np.random.default_rng(s) for s in streams)

    latent = _Latent(cfg, r_latent)
    user_group = r_latent.choice(cfg.n_groups, cfg.n_users, p=latent.group_w).astype(np.int64)
    user_topic = latent.group_topics(user_group, r_latent)  # (n_users,)
    cat = _Catalogue(cfg, r_items)
    log.info("latent structure and catalogue: %.1fs", time.perf_counter() - t0)

    counts = heavy_tailed_counts(cfg, r_clicks)  # (n_users,) sums to n_clicks

    def draw(users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        topics = latent.click_topics(cfg, user_group[users], user_topic[users], rng)
        return cat.items_of(topics, rng)

    cover = cover_items(counts, user_topic, cat.topic, r_clicks)  # every item gets a click
    user, item = unique_clicks(counts, cfg.n_items, draw, r_clicks, initial=cover)
    log.info("clicks drawn (%d rows): %.1fs", user.shape[0], time.perf_counter() - t0)

    birth = cat.birth_off[item]  # (n_clicks,)
    ts = (
        cfg.start_ts
        + birth
        + (r_time.random(item.shape[0]) * (cfg.period_s - birth)).astype(np.int64)
    )
    order = np.argsort(ts, kind="stable")  # (user, item) order kept among equal ts
    user, item, ts = user[order], item[order], ts[order]
    del order, birth
    log.info("timestamps: %.1fs", time.perf_counter() - t0)

    gender, city, age, tags = user_features(
        cfg, user_group, user_topic, latent.group_topics, r_feat
    )
    log.info("user features: %.1fs", time.perf_counter() - t0)
    return SynthData(
        config=cfg,
        user_group=user_group,
        user_topic=user_topic,
        gender=gender,
        city=city,
        age=age,
        tags=tags,
        item_topic=cat.topic,
        item_birth_ts=cfg.start_ts + cat.birth_off,
        item_is_new=cat.is_new,
        click_user=user,
        click_item=item,
        click_ts=ts,
    )
