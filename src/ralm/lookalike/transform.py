"""The transforming layer: FC m->h + ReLU, shared by the target user and the seeds."""

from __future__ import annotations

import torch
from torch import nn


class TransformingLayer(nn.Module):
    """Maps universal user embeddings into the look-alike space (paper Fig. 3, bottom).

    Args:
        m: universal embedding dimension (stage-1 output).
        h: transformed dimension.

    Example::

        layer = TransformingLayer(128, 128)
        e = layer(torch.randn(4, 128))  # (4, 128), entries >= 0
    """

    def __init__(self, m: int, h: int) -> None:
        super().__init__()
        self.fc = nn.Linear(m, h)

    def forward(self, universal: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(universal))  # (N, m) -> (N, h)
