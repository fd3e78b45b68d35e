"""Vectorised encoding helpers against numpy / Python references."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ralm.data.features import (
    build_vocab,
    csr_from_pairs,
    encode,
    map_ids,
    minmax_normalise,
    sorted_unique_ids,
    unique_int,
    unique_inverse_int,
)


@pytest.mark.parametrize("span", [100, 10**12])  # lookup-table path and argsort path
def test_unique_inverse_matches_numpy(span: int) -> None:
    x = np.random.default_rng(0).integers(-span, span, 5000)
    u, inv = unique_inverse_int(x)
    ru, rinv = np.unique(x, return_inverse=True)
    np.testing.assert_array_equal(u, ru)
    np.testing.assert_array_equal(inv, rinv)
    np.testing.assert_array_equal(unique_int(x), ru)


def test_map_ids_int_and_string_paths_agree() -> None:
    a, b = [10, 2, 33, 2], [2, 7]
    ids_i, (ca, cb) = map_ids([pa.array(a), pa.array(b)])
    ids_s, (sa, sb) = map_ids([pa.array([str(v) for v in a]), pa.array([str(v) for v in b])])
    assert ids_i.to_pylist() == ids_s.to_pylist() == ["2", "7", "10", "33"]
    assert ca.tolist() == sa.tolist() == [2, 0, 3, 0]
    assert cb.tolist() == sb.tolist() == [0, 1]


def test_sorted_unique_ids_natural_then_lexicographic() -> None:
    assert sorted_unique_ids(pa.array(["10", "9", "09", None])).to_pylist() == ["09", "9", "10"]
    assert sorted_unique_ids(pa.array(["b", "a10", "a9"])).to_pylist() == ["a10", "a9", "b"]


def test_vocab_and_codes() -> None:
    vocab = build_vocab(pa.array(["m", "f", None, "", "f"]))
    assert vocab.to_pylist() == ["f", "m"]
    assert encode(pa.array(["m", "x", None, "f"]), vocab).tolist() == [2, 0, 0, 1]


def test_csr_from_pairs_against_python() -> None:
    rows = np.array([2, 0, 2, 2, 0])
    vals = np.array([5, 1, 3, 5, 1])
    off, v = csr_from_pairs(rows, vals, 4)
    assert off.tolist() == [0, 2, 2, 5, 5] and v.tolist() == [1, 1, 5, 3, 5]
    off, v = csr_from_pairs(rows, vals, 4, unique=True)
    assert off.tolist() == [0, 1, 1, 3, 3] and v.tolist() == [1, 3, 5]


def test_minmax_uses_stat_rows_and_maps_missing_to_zero() -> None:
    x = np.array([10.0, 20.0, np.nan, 40.0, 0.0])
    out, lo, hi = minmax_normalise(x, np.array([0, 1, 3]))
    assert (lo, hi) == (10.0, 40.0)
    np.testing.assert_allclose(out, [0.0, 1 / 3, 0.0, 1.0, 0.0])  # 0.0 clipped up to 0
    out, lo, hi = minmax_normalise(np.array([np.nan, np.nan]), np.array([0]))
    assert lo is None and out.tolist() == [0.0, 0.0]
