"""The transforming layer: FC m->h + ReLU, shared by the target user and the seeds."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

CENTER_ROWS = 200_000  # users averaged by :meth:`TransformingLayer.fit_center` (at most)


class TransformingLayer(nn.Module):
    """Maps universal user embeddings into the look-alike space (paper Fig. 3, bottom).

    With ``center`` the layer subtracts a fixed offset after the ReLU, the mean transformed
    embedding of the user population (:meth:`fit_center`, refreshed by stage 2 at every
    re-clustering and saved with the weights): the ReLU puts every vector in the positive
    orthant, where one common direction dominates every cosine; centred, the cosines
    measure how a user differs from the average user like the item's seeds do.

    Args:
        m: universal embedding dimension (stage-1 output).
        h: transformed dimension.
        center: subtract the population mean after the ReLU.

    Example::

        layer = TransformingLayer(128, 128)
        e = layer(torch.randn(4, 128))  # (4, 128), entries >= 0
    """

    offset: torch.Tensor  # (h,) buffer, only with ``center``

    def __init__(self, m: int, h: int, center: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(m, h)
        self.center = center
        if center:
            self.register_buffer("offset", torch.zeros(h))

    def forward(self, universal: torch.Tensor) -> torch.Tensor:
        e = torch.relu(self.fc(universal))  # (N, m) -> (N, h)
        return e - self.offset if self.center else e

    @torch.no_grad()
    def fit_center(self, universal: np.ndarray, max_rows: int = CENTER_ROWS) -> None:
        """Set the offset to the mean of ``relu(fc(x))`` over the users ``universal``
        (N, m) (every ``ceil(N / max_rows)``-th user when there are more: deterministic).
        No-op without ``center``."""
        if not self.center:
            return
        n = universal.shape[0]
        if n == 0:
            raise ValueError("fit_center needs at least one user embedding")
        step = -(-n // max_rows)
        x = torch.from_numpy(np.ascontiguousarray(universal[::step], dtype=np.float32))
        mean = torch.relu(self.fc(x)).mean(dim=0, dtype=torch.float64)
        self.offset.copy_(mean.to(self.offset.dtype))
