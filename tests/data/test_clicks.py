"""The one "clicks of these splits" helper and seed CSR, against naive loops."""

from __future__ import annotations

from ralm.data.clicks import click_keys, fit_splits, seed_csr, split_clicks
from ralm.data.encoded import Split
from ralm.data.toy import make_toy_dataset


def test_clicks_seed_csr_and_keys_match_naive_loops() -> None:
    ds = make_toy_dataset(seed=3)
    it = ds.interactions
    for splits in [(Split.TRAIN,), (Split.TRAIN, Split.COLD_SEED), (Split.VALID, Split.TEST)]:
        rows = [
            r for r in range(len(it)) if int(it.split[r]) in [int(s) for s in splits]
            and it.label[r] > 0
        ]  # fmt: skip
        u, i = split_clicks(ds, splits)
        assert u.tolist() == [int(it.user[r]) for r in rows]
        assert i.tolist() == [int(it.item[r]) for r in rows]
        pairs = {(int(it.user[r]), int(it.item[r])) for r in rows}
        keys = click_keys(ds, splits)
        assert keys.tolist() == sorted(a * ds.n_items + b for a, b in pairs)
        offsets, users = seed_csr(ds, splits)
        assert offsets.shape == (ds.n_items + 1,) and offsets[-1] == users.size
        for j in range(ds.n_items):
            expect = sorted(a for a, b in pairs if b == j)
            assert users[offsets[j] : offsets[j + 1]].tolist() == expect
    assert fit_splits(ds) == (Split.TRAIN,)
