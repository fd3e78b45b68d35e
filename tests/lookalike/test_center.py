"""The centred transforming layer (``LookalikeConfig.center``): the offset is the user
population's mean transformed embedding, refreshed at every re-clustering and saved with
the weights it was computed from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ralm.data.encoded import EncodedDataset
from ralm.lookalike.checkpoint import load_lookalike_model
from ralm.lookalike.config import LookalikeConfig, LookalikeTrainConfig
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.train import train_lookalike
from ralm.lookalike.transform import TransformingLayer

M = 12  # width of the `universal` fixture in conftest.py


def relu_mean(layer: TransformingLayer, x: np.ndarray) -> np.ndarray:
    """Independent reference: numpy's mean of relu(x W^T + b) in float64."""
    w = layer.fc.weight.detach().double().numpy()
    b = layer.fc.bias.detach().double().numpy()
    return np.maximum(x.astype(np.float64) @ w.T + b, 0.0).mean(axis=0)


def test_fit_center_subtracts_the_population_mean() -> None:
    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(size=(95, 6)).astype(np.float32)
    layer = TransformingLayer(6, 5, center=True)
    np.testing.assert_array_equal(layer.offset.numpy(), np.zeros(5, np.float32))
    layer.fit_center(x)
    np.testing.assert_allclose(layer.offset.numpy(), relu_mean(layer, x), atol=1e-6)
    e = layer(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(e.mean(axis=0), 0.0, atol=1e-5)  # centred
    assert (e < 0).any()  # no longer confined to the positive orthant
    layer.fit_center(x, max_rows=10)  # every 10th user
    np.testing.assert_allclose(layer.offset.numpy(), relu_mean(layer, x[::10]), atol=1e-6)
    with pytest.raises(ValueError, match="at least one user"):
        layer.fit_center(x[:0])


def test_uncentred_layer_is_unchanged() -> None:
    layer = TransformingLayer(6, 5)
    assert set(layer.state_dict()) == {"fc.weight", "fc.bias"}  # old checkpoints load
    x = torch.randn(7, 6)
    before = layer(x)
    layer.fit_center(x.numpy())  # no-op
    torch.testing.assert_close(layer(x), before, atol=0, rtol=0)
    assert (before >= 0).all()


def test_centred_training_saves_the_offset_of_its_weights(
    toy: EncodedDataset, universal: np.ndarray, lookup, tmp_path: Path
) -> None:
    cfg = LookalikeConfig(m=M, h=8, k=3, center=True)
    tc = LookalikeTrainConfig(epochs=2, batch_size=256, patience=0, neg_sampling="uniform")
    res = train_lookalike(toy, cfg, universal, lookup, tmp_path / "lk", tc)
    layer = res.model.transform_layer
    # refreshed at the last re-clustering from the weights it was saved with
    np.testing.assert_allclose(layer.offset.numpy(), relu_mean(layer, universal), atol=1e-5)
    assert float(layer.offset.abs().max()) > 0
    loaded, loaded_cfg = load_lookalike_model(tmp_path / "lk")
    assert loaded_cfg.center
    x = torch.from_numpy(universal[:50])
    with torch.no_grad():
        torch.testing.assert_close(loaded.transform(x), res.model.transform(x))
    # the planted taste groups are still found by the centred look-alike score
    assert res.best_val_auc > 0.7
    # an uncentred model of the same shape refuses the centred weights (strict load)
    with pytest.raises(RuntimeError, match="offset"):
        LookalikeModel(cfg.model_copy(update={"center": False})).load_state_dict(
            res.model.state_dict()
        )
