"""The compiled scorer chain (ralm.lookalike.scorer_kernel) against the naive per-(user,
item) loop and the torch chain, and its build: cache, rebuild, no compiler, bad settings."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ralm.errors import ConfigError
from ralm.lookalike import scorer_kernel
from ralm.lookalike.config import LookalikeConfig
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.scorer import KERNEL_BY_USERS_BELOW, KERNEL_FROM, use_kernel

from .test_scorer import naive_scores


@pytest.fixture
def fresh_kernel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A private kernel cache folder; the module's state is reset before and after."""
    monkeypatch.setenv(scorer_kernel.DIR_ENV, str(tmp_path / "kernels"))
    scorer_kernel.reset()
    yield tmp_path / "kernels"
    scorer_kernel.reset()


@pytest.fixture
def threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _index(n_i: int, k: int, h: int, seed: int):
    """Items with full, partial and no valid slots (garbage in the masked ones)."""
    g = torch.Generator().manual_seed(seed)
    cent = torch.relu(torch.randn(n_i, k, h, generator=g))
    n_valid = torch.randint(0, k + 1, (n_i,), generator=g)
    n_valid[:3] = torch.tensor([k, 0, 1])
    mask = torch.arange(k)[None, :] < n_valid[:, None]
    cent[~mask] = 5.0  # must not matter
    sizes = torch.randint(1, 80, (n_i, k), generator=g) * mask
    return cent, mask, sizes


def _scores(model, e_u, terms, mode: str, monkeypatch, chunk: int = 1024) -> torch.Tensor:
    monkeypatch.setenv(scorer_kernel.MODE_ENV, mode)
    with torch.no_grad():
        return model.score_prepared(e_u, terms, chunk_items=chunk)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("n_b", [1, 2, 5, 8, 9, 16, 31, 32, 40])
def test_kernel_matches_naive_loop_and_torch_chain(
    n_b: int, n_threads: int, monkeypatch: pytest.MonkeyPatch, threads: None
) -> None:
    torch.set_num_threads(n_threads)
    torch.manual_seed(n_b)
    model = LookalikeModel(LookalikeConfig(m=16, h=16, k=7))
    with torch.no_grad():
        model.prior_weight.fill_(-1.0)  # a visible audience prior
    cent, mask, sizes = _index(41, 7, 16, seed=n_b)
    e_u = torch.relu(torch.randn(n_b, 16)) * 3.0  # large logits: tanh saturates
    e_u[0] = 0.0  # a zero user scores only the prior
    with torch.no_grad():
        glob = model.item_global(cent, mask, sizes)
        terms = model.prepare_items(cent, mask, glob, sizes=sizes)
        ref = naive_scores(model, e_u, cent, mask, glob, sizes)
    torch_chain = _scores(model, e_u, terms, "off", monkeypatch)
    for chunk in (5, 1024):  # several tiles, and tiles split over threads
        kernel = _scores(model, e_u, terms, "on", monkeypatch, chunk=chunk)
        np.testing.assert_allclose(kernel.numpy(), ref, atol=2e-5)
        np.testing.assert_allclose(kernel.numpy(), torch_chain.numpy(), atol=2e-6)
    ran = use_kernel(n_b) is not None
    skipped = n_threads == 1 and KERNEL_FROM <= n_b < KERNEL_BY_USERS_BELOW
    assert ran == (not skipped)


def test_kernel_splits_a_tile_over_threads_and_keeps_every_column(
    monkeypatch: pytest.MonkeyPatch, threads: None
) -> None:
    """Hundreds of items per tile, two threads: the parts write disjoint columns."""
    torch.set_num_threads(2)
    torch.manual_seed(3)
    model = LookalikeModel(LookalikeConfig(m=16, h=16, k=20))
    cent, mask, sizes = _index(700, 20, 16, seed=3)
    e_u = torch.relu(torch.randn(32, 16))
    with torch.no_grad():
        glob = model.item_global(cent, mask, sizes)
        terms = model.prepare_items(cent, mask, glob, sizes=sizes)
    off = _scores(model, e_u, terms, "off", monkeypatch)
    on = _scores(model, e_u, terms, "on", monkeypatch)
    assert on.shape == (32, 700)
    np.testing.assert_allclose(on.numpy(), off.numpy(), atol=2e-6)


def test_kernel_with_the_bfloat16_table_equals_the_torch_chain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(4)
    model = LookalikeModel(LookalikeConfig(m=16, h=16, k=5))
    cent, mask, sizes = _index(300, 5, 16, seed=4)
    e_u = torch.relu(torch.randn(24, 16))
    with torch.no_grad():
        glob = model.item_global(cent, mask, sizes)
        half = model.prepare_items(cent, mask, glob, sizes=sizes, dtype="bfloat16")
    # the same bfloat16 matmul feeds both chains: they agree to float32 rounding
    np.testing.assert_allclose(
        _scores(model, e_u, half, "on", monkeypatch).numpy(),
        _scores(model, e_u, half, "off", monkeypatch).numpy(),
        atol=2e-6,
    )


def test_non_finite_users_give_the_same_answer_in_both_chains(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(5)
    model = LookalikeModel(LookalikeConfig(m=8, h=8, k=6))
    cent, mask, sizes = _index(30, 6, 8, seed=5)
    e_u = torch.relu(torch.randn(9, 8))
    e_u[3, 2] = float("nan")
    e_u[4, 1] = float("inf")
    with torch.no_grad():
        terms = model.prepare_items(cent, mask, model.item_global(cent, mask, sizes), sizes=sizes)
    on = _scores(model, e_u, terms, "on", monkeypatch)
    off = _scores(model, e_u, terms, "off", monkeypatch)
    assert torch.equal(on.isnan(), off.isnan())  # rows 3 and 4 are NaN, the rest finite
    assert on.isnan().any(dim=1).tolist() == [False] * 3 + [True, True] + [False] * 4
    np.testing.assert_allclose(on[~on.isnan()].numpy(), off[~off.isnan()].numpy(), atol=2e-6)


def test_build_is_cached_and_a_corrupt_cache_is_rebuilt(
    fresh_kernel: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # (built, not loaded, until the end: a loaded shared object must never be rewritten)
    path = scorer_kernel._build(fresh_kernel)
    assert path.parent == fresh_kernel and path.name.startswith("chain-")
    built = path.stat().st_mtime_ns
    assert scorer_kernel._build(fresh_kernel) == path
    assert path.stat().st_mtime_ns == built  # reused, not recompiled
    assert not [p for p in fresh_kernel.iterdir() if p.name.startswith(".build-")]
    path.write_bytes(b"not a shared object")  # e.g. a disk that filled mid-copy
    monkeypatch.setenv(scorer_kernel.MODE_ENV, "on")
    with caplog.at_level(logging.WARNING, logger="ralm.lookalike.scorer_kernel"):
        kernel = scorer_kernel.load()
    assert kernel is not None and kernel.path == path
    assert "does not load" in caplog.text
    assert path.read_bytes()[:4] == b"\x7fELF"
    assert kernel.lanes in (8, 16) and 8 in kernel.fns
    assert scorer_kernel.load() is kernel  # loaded once per process


def test_without_a_compiler_auto_falls_back_and_on_refuses(
    fresh_kernel: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CC", str(fresh_kernel / "no-such-cc"))
    monkeypatch.setenv(scorer_kernel.MODE_ENV, "auto")
    torch.manual_seed(6)
    model = LookalikeModel(LookalikeConfig(m=8, h=8, k=6))
    cent, mask, sizes = _index(20, 6, 8, seed=6)
    e_u = torch.relu(torch.randn(12, 8))
    with torch.no_grad():
        glob = model.item_global(cent, mask, sizes)
        terms = model.prepare_items(cent, mask, glob, sizes=sizes)
        ref = naive_scores(model, e_u, cent, mask, glob, sizes)
    with caplog.at_level(logging.WARNING, logger="ralm.lookalike.scorer_kernel"):
        assert scorer_kernel.load() is None
        s = _scores(model, e_u, terms, "auto", monkeypatch)  # the torch chain, same scores
    np.testing.assert_allclose(s.numpy(), ref, atol=1e-5)
    assert caplog.text.count("unavailable") == 1  # warned once, not per request
    assert "no-such-cc" in caplog.text
    monkeypatch.setenv(scorer_kernel.MODE_ENV, "on")
    with pytest.raises(ConfigError, match=r"RALM_SCORER_KERNEL=on.*no-such-cc"):
        scorer_kernel.load()
    with pytest.raises(ConfigError, match="RALM_SCORER_KERNEL=on"):
        _scores(model, e_u, terms, "on", monkeypatch)
    monkeypatch.setenv(scorer_kernel.MODE_ENV, "off")
    assert scorer_kernel.load() is None


def test_a_compiler_error_is_reported(
    fresh_kernel: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A compiler that runs but fails: its message reaches the error, nothing is cached."""
    cc = tmp_path / "badcc"
    cc.write_text(
        '#!/bin/sh\nif [ "$1" = --version ]; then echo badcc 1.0; exit 0; fi\n'
        'echo "chain.c:1: error: broken" >&2; exit 1\n'
    )
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv(scorer_kernel.MODE_ENV, "on")
    with pytest.raises(ConfigError, match="broken"):
        scorer_kernel.load()
    assert not list(fresh_kernel.glob("chain-*.so"))


def test_bad_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(scorer_kernel.MODE_ENV, "fast")
    with pytest.raises(ConfigError, match=r"RALM_SCORER_KERNEL='fast'.*auto, off, on"):
        scorer_kernel.mode()
    monkeypatch.setenv(scorer_kernel.MODE_ENV, " ON ")
    assert scorer_kernel.mode() == "on"
    assert os.environ[scorer_kernel.MODE_ENV] == " ON "
