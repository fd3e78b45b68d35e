"""Stage 2's mixed-precision option (``[lookalike_train] matmul_dtype``).

bfloat16 rounds the inputs of the two large products of the softmax loss (the all-pairs
scores and the global attention) to 8 significant bits, accumulates in float32, rounds the
result to bfloat16 once and keeps everything else in float32. Checked against the float32
forms: the values move by about bfloat16's rounding (not more, not zero), the gradients
point the same way, and training with it learns the planted groups as float32 training
does.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from ralm.data.encoded import EncodedDataset
from ralm.lookalike import train as train_mod
from ralm.lookalike.attention import GlobalAttention
from ralm.lookalike.config import LookalikeConfig, LookalikeTrainConfig
from ralm.lookalike.scorer_math import matmul, score_matrix_train
from ralm.lookalike.train import resolve_matmul_dtype, train_lookalike

M = 12  # width of the `universal` fixture in conftest.py
BF16_EPS = 2.0**-8  # bfloat16: 8 significant bits, half a step is at most 2^-8 relative


def _inputs(seed: int = 0, n_b: int = 9, n_i: int = 13, k: int = 5, h: int = 32):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n_i, k, generator=g) < 0.8
    mask[0] = False  # an item without seeds
    leaves = {
        "e_u": torch.relu(torch.randn(n_b, h, generator=g)),
        "w_local": torch.randn(h, h, generator=g) / h**0.5,
        "cent": torch.relu(torch.randn(n_i, k, h, generator=g)) * mask[..., None],
        "gv": torch.randn(n_i, h, generator=g),
    }
    return {n: t.requires_grad_() for n, t in leaves.items()}, mask


def test_matmul_is_the_product_of_the_rounded_inputs_rounded_once() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 40, generator=g), torch.randn(40, 7, generator=g)
    want = a.bfloat16().double() @ b.bfloat16().double()  # exact on the rounded inputs
    got = matmul(a, b, torch.bfloat16)
    assert got.dtype == torch.float32
    # accumulated in float32, the result rounded to bfloat16 once: within half a step
    assert torch.all((got.double() - want).abs() <= BF16_EPS * want.abs() * 1.01 + 1e-6)
    assert not torch.equal(got, a @ b)
    assert torch.equal(matmul(a, b), a @ b)  # float32: the plain product
    d = a.double()
    assert matmul(d, d.T, torch.bfloat16).dtype == torch.float64  # only float32 is rounded


def test_all_pairs_scores_and_gradients_follow_float32() -> None:
    leaves, mask = _inputs()
    e_u, w_l, cent, gv = (leaves[n] for n in ("e_u", "w_local", "cent", "gv"))
    full = score_matrix_train(e_u, w_l, cent, mask, gv)
    half = score_matrix_train(e_u, w_l, cent, mask, gv, matmul_dtype=torch.bfloat16)
    assert half.dtype == torch.float32 and half.shape == full.shape
    err = (half - full).abs().max().item()
    assert 0.0 < err < 8 * BF16_EPS  # rounded (not the float32 path), by about one step
    assert torch.all(half[:, 0] == full[:, 0])  # no seeds: the global term only
    w = torch.randn(full.shape, generator=torch.Generator().manual_seed(1))
    names = list(leaves)
    g_full = torch.autograd.grad((full * w).sum(), [leaves[n] for n in names], retain_graph=True)
    g_half = torch.autograd.grad((half * w).sum(), [leaves[n] for n in names])
    for name, a, b in zip(names, g_full, g_half, strict=True):
        assert b.dtype == torch.float32, name
        cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
        assert cos > 0.999, (name, cos)
        rel = ((a - b).norm() / a.norm()).item()
        assert rel < 0.05, (name, rel)


def test_global_attention_in_bfloat16_follows_float32() -> None:
    torch.manual_seed(0)
    att = GlobalAttention(16)
    leaves, mask = _inputs(h=16)
    cent = leaves["cent"]
    full = att(cent, mask)
    half = att(cent, mask, matmul_dtype=torch.bfloat16)
    assert half.dtype == torch.float32
    err = ((half - full).abs().max() / full.abs().max()).item()
    assert 0.0 < err < 8 * BF16_EPS
    (g_full,) = torch.autograd.grad(full.sum(), [att.w_g.weight])
    (g_half,) = torch.autograd.grad(half.sum(), [att.w_g.weight])
    assert ((g_full - g_half).norm() / g_full.norm()).item() < 0.05


def test_matmul_dtype_setting(monkeypatch: pytest.MonkeyPatch, caplog) -> None:  # type: ignore[no-untyped-def]
    assert resolve_matmul_dtype("float32") == torch.float32
    assert resolve_matmul_dtype("bfloat16") == torch.bfloat16
    native = train_mod.native_bf16()
    assert resolve_matmul_dtype("auto") == (torch.bfloat16 if native else torch.float32)
    monkeypatch.setattr(train_mod, "native_bf16", lambda: False)  # a CPU without bf16 units
    assert resolve_matmul_dtype("auto") == torch.float32
    with caplog.at_level(logging.WARNING, logger="ralm.lookalike.train"):
        assert resolve_matmul_dtype("bfloat16") == torch.bfloat16
    assert "no native bf16" in caplog.text
    with pytest.raises(ValueError, match="matmul_dtype"):
        LookalikeTrainConfig(matmul_dtype="float16")  # type: ignore[arg-type]


def test_bfloat16_training_learns_like_float32(toy: EncodedDataset, universal, lookup) -> None:  # type: ignore[no-untyped-def]
    cfg = LookalikeConfig(m=M, h=8, k=3)
    base = LookalikeTrainConfig(epochs=3, batch_size=64, lr=0.01, patience=5, seed=0)
    runs = {
        dt: train_lookalike(
            toy, cfg, universal, lookup, train_cfg=base.model_copy(update={"matmul_dtype": dt})
        )
        for dt in ("float32", "bfloat16")
    }
    full, half = (runs[dt].history for dt in ("float32", "bfloat16"))
    assert [h["loss"] for h in full] != [h["loss"] for h in half]  # the option took effect
    assert half[-1]["loss"] < half[0]["loss"]  # it trains
    assert runs["bfloat16"].best_val_auc > 0.7  # planted groups separated, as in float32
    assert abs(runs["bfloat16"].best_val_auc - runs["float32"].best_val_auc) < 0.03
    rec = [h["recall"] for h in half]
    assert np.isfinite(rec).all() and max(rec) >= 0.8 * max(h["recall"] for h in full)
