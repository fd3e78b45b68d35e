"""Stage 2's compiled local cosine (ralm.lookalike.train_kernel): values and gradients of
the all-pairs training scores against the torch form in float64, both precisions of the
product, threads, items without valid slots, and when the torch form is used instead."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from ralm.data.encoded import EncodedDataset
from ralm.lookalike import scorer_kernel, train_kernel
from ralm.lookalike.attention import log_sizes
from ralm.lookalike.config import LookalikeConfig, LookalikeTrainConfig
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.scorer_math import score_matrix_train
from ralm.lookalike.train import train_lookalike

M = 12  # width of the `universal` fixture in conftest.py


@pytest.fixture
def threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _batch(n_b: int, n_i: int, k: int, h: int, seed: int):
    """Users, W_l and items with full, partial, single and no valid slots."""
    g = torch.Generator().manual_seed(seed)
    e_u = torch.randn(n_b, h, generator=g, dtype=torch.float64)
    w_l = 0.3 * torch.randn(h, h, generator=g, dtype=torch.float64)
    n_valid = torch.randint(0, k + 1, (n_i,), generator=g)
    n_valid[:3] = torch.tensor([k, 0, 1])
    mask = torch.arange(k)[None, :] < n_valid[:, None]
    cent = torch.relu(torch.randn(n_i, k, h, generator=g, dtype=torch.float64)) * mask[..., None]
    gv = torch.randn(n_i, h, generator=g, dtype=torch.float64)
    sizes = torch.randint(1, 60, (n_i, k), generator=g) * mask
    grad = torch.randn(n_b, n_i, generator=g, dtype=torch.float64)
    return e_u, w_l, cent, mask, gv, sizes, grad


def _run(mode, monkeypatch, batch, dtype=torch.float64, matmul_dtype=torch.float32, lp=True):
    """Scores and the gradients of ``sum(grad * scores)`` wrt the users and W_l."""
    monkeypatch.setenv(scorer_kernel.MODE_ENV, mode)
    e_u, w_l, cent, mask, gv, sizes, grad = batch
    e = e_u.detach().to(dtype).clone().requires_grad_()
    w = w_l.detach().to(dtype).clone().requires_grad_()
    log_prior = log_sizes(sizes).to(dtype) if lp else None
    s = score_matrix_train(
        e, w, cent.to(dtype), mask, gv.to(dtype), log_prior=log_prior, matmul_dtype=matmul_dtype
    )
    (s * grad.to(dtype)).sum().backward()
    assert e.grad is not None and w.grad is not None
    return s.detach().double(), e.grad.double(), w.grad.double()


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("n_b", [1, 7, 8, 16, 17, 40])
@pytest.mark.parametrize("lp", [True, False])
def test_kernel_equals_the_torch_form_in_float64(
    n_b: int, n_threads: int, lp: bool, monkeypatch: pytest.MonkeyPatch, threads: None
) -> None:
    torch.set_num_threads(n_threads)
    batch = _batch(n_b, 90, 6, 16, seed=n_b)
    ref = _run("off", monkeypatch, batch, lp=lp)  # float64: the torch form, no kernel
    got = _run("on", monkeypatch, batch, dtype=torch.float32, lp=lp)
    for name, a, b in zip(("scores", "d users", "d W_l"), got, ref, strict=True):
        err = float((a - b).abs().max() / b.abs().max())
        assert err < 2e-5, (name, err)
    # items without a valid slot: no local term (only the global cosine's 0.3 weight)
    only_global = _run("on", monkeypatch, batch, dtype=torch.float32, lp=lp)[0][:, 1]
    e_u, _, _, _, gv, _, _ = batch
    cos_g = torch.nn.functional.cosine_similarity(e_u, gv[1][None, :], dim=1)
    np.testing.assert_allclose(only_global.numpy(), 0.3 * cos_g.numpy(), atol=1e-5)


def test_kernel_splits_items_over_threads(monkeypatch: pytest.MonkeyPatch, threads: None) -> None:
    batch = _batch(33, 300, 20, 32, seed=5)  # 300 items: two parts at two threads
    torch.set_num_threads(1)
    one = _run("on", monkeypatch, batch, dtype=torch.float32)
    torch.set_num_threads(2)
    assert len(train_kernel._parts(300)) == 2
    two = _run("on", monkeypatch, batch, dtype=torch.float32)
    for a, b in zip(one, two, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)  # each item computed alike


def test_kernel_in_mixed_precision_equals_the_torch_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batch = _batch(24, 64, 8, 32, seed=9)
    off = _run("off", monkeypatch, batch, torch.float32, torch.bfloat16)
    on = _run("on", monkeypatch, batch, torch.float32, torch.bfloat16)
    for a, b in zip(on, off, strict=True):  # the same bfloat16 products, rounded alike
        assert float((a - b).abs().max() / b.abs().max()) < 2e-3


def test_torch_form_where_the_kernel_does_not_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the kernel must not run here")

    batch = _batch(8, 20, 4, 8, seed=1)
    monkeypatch.setattr(train_kernel, "local_cos", refuse)
    _run("off", monkeypatch, batch, dtype=torch.float32)  # switched off
    _run("on", monkeypatch, batch, dtype=torch.float64)  # float64: not the kernel's
    c = batch[2].float().requires_grad_()  # centroids that want a gradient
    assert train_kernel.kernel_for(c) is None
    monkeypatch.setenv(scorer_kernel.MODE_ENV, "on")
    assert train_kernel.kernel_for(c.detach(), None) is not None


def test_training_with_and_without_the_kernel_agree(
    toy: EncodedDataset, universal: np.ndarray, lookup, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = LookalikeConfig(m=M, h=8, k=3)
    tc = LookalikeTrainConfig(epochs=1, batch_size=128, patience=0, steps_per_epoch=5)
    out, calls = {}, []
    real = train_kernel.local_cos

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_kernel, "local_cos", spy)
    for mode in ("off", "on"):
        monkeypatch.setenv(scorer_kernel.MODE_ENV, mode)
        out[mode] = train_lookalike(toy, cfg, universal, lookup, train_cfg=tc)
        assert (len(calls) > 0) == (mode == "on")  # the steps ran the kernel when on
    a, b = out["off"].model.state_dict(), out["on"].model.state_dict()
    for name, v in a.items():  # 5 Adam steps from the same start
        torch.testing.assert_close(b[name], v, atol=2e-4, rtol=2e-4, msg=name)
    assert isinstance(out["on"].model, LookalikeModel)
