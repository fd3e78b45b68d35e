"""ralm.common: atomic writes, sorted-key membership, rejection sampling, progress policy."""

from __future__ import annotations

import numpy as np
import pytest

from ralm.common.atomic import atomic_dir, atomic_write_text, remove_stale_temporaries
from ralm.common.keys import contains, find_sorted, pair_keys
from ralm.common.progress import progress_disabled, progress_enabled
from ralm.common.sampling import rejection_sample


def test_atomic_write_replaces_and_leaves_no_temporaries(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.txt"]


def test_atomic_dir_keeps_old_content_on_error(tmp_path):
    d = tmp_path / "v1"
    with atomic_dir(d) as tmp:
        (tmp / "x").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(d) as tmp:
        (tmp / "x").write_text("new")
        raise RuntimeError("crash")
    assert (d / "x").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["v1"]
    with atomic_dir(d) as tmp:
        (tmp / "x").write_text("new")
    assert (d / "x").read_text() == "new"
    with pytest.raises(FileExistsError), atomic_dir(d, replace=False):
        pass


def test_remove_stale_temporaries(tmp_path):
    (tmp_path / ".v2.tmp-123").mkdir()
    (tmp_path / ".f.tmp-1-2").write_text("x")
    (tmp_path / "keep").write_text("x")
    assert remove_stale_temporaries(tmp_path) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["keep"]


def test_keys_match_python_sets():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 50, 300), rng.integers(0, 70, 300)
    keys = pair_keys(a, b, 70)
    ref = {int(x) * 70 + int(y) for x, y in zip(a, b, strict=True)}
    assert keys.tolist() == sorted(ref)
    qa, qb = rng.integers(0, 50, 500), rng.integers(0, 70, 500)
    q = qa * 70 + qb
    assert contains(keys, q).tolist() == [int(x) in ref for x in q]
    pos = find_sorted(keys, q)
    assert all((p == -1) == (int(x) not in ref) for p, x in zip(pos, q, strict=True))
    assert all(keys[p] == x for p, x in zip(pos, q, strict=True) if p >= 0)
    assert not contains(np.zeros(0, np.int64), q).any()


def test_rejection_sample_never_returns_forbidden():
    rng = np.random.default_rng(1)
    users = np.arange(20)
    forbidden = pair_keys(np.repeat(users, 5), np.tile(np.arange(5), 20), 10)
    u, i = rejection_sample(users, 4, lambda n: rng.integers(0, 10, n), forbidden, 10)
    assert u.size == 80 and (i >= 5).all()
    # a user who clicked every item gets no negatives instead of a wrong one
    full = pair_keys(np.zeros(10, np.int64), np.arange(10), 10)
    u, i = rejection_sample(np.array([0]), 3, lambda n: rng.integers(0, 10, n), full, 10)
    assert u.size == 0


def test_progress_policy(monkeypatch):
    monkeypatch.setenv("RALM_NO_PROGRESS", "1")
    assert progress_disabled() and not progress_enabled()
