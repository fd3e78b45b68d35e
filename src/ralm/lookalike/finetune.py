"""End-to-end stage 2: the stage-1 user tower inside the stage-2 graph (``finetune_user``).

Frozen stage 1 enters stage 2 only through its outputs (``seed_universal``,
``target_universal``). With ``LookalikeTrainConfig.finetune_user`` the tower itself is
trained by the look-alike loss at a smaller learning rate: each batch's target users are
embedded by :class:`TowerEncoder` in the autograd graph (the target item removed from the
history, as in ``target_universal``), and before every re-clustering all users are
re-embedded (:meth:`TowerEncoder.embed_all`), so the seeds, the clusters and the final
index come from the tuned tower. Seeds are constants within an epoch (the paper's
alternation of k-means and gradient training), as for the transforming layer.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ralm.data.batching import gather_users
from ralm.data.encoded import EncodedDataset


class TowerEncoder(nn.Module):
    """A user tower bound to a dataset: ``forward(users, exclude_items) -> (B, m)``.

    Args:
        tower: the stage-1 user tower (an ``nn.Module`` taking a ``UserBatch``); it is
            trained in place (pass a copy to keep the original). Sparse embedding
            gradients are switched to dense (Adam).
        ds: the dataset whose users are embedded (TRAIN-only histories).
        batch_size: users per call of :meth:`embed_all`.

    Example::

        enc = TowerEncoder(copy.deepcopy(user_model.tower), ds)
        e = enc(np.array([0, 1]), np.array([5, -1]))   # (2, m), differentiable
        all_users = enc.embed_all()                     # (n_users, m) float32, no grad
    """

    def __init__(self, tower: nn.Module, ds: EncodedDataset, batch_size: int = 4096) -> None:
        super().__init__()
        self.tower = tower
        self.ds = ds
        self.batch_size = batch_size
        for mod in tower.modules():
            if isinstance(mod, (nn.Embedding, nn.EmbeddingBag)):
                mod.sparse = False

    def forward(self, users: np.ndarray, exclude_items: np.ndarray | None = None) -> torch.Tensor:
        """Universal embeddings (B, m) of dataset users, the row's item (-1 = none) removed
        from the history (differentiable in the tower's weights)."""
        return self.tower(gather_users(self.ds, np.asarray(users, np.int64), exclude_items))

    @torch.no_grad()
    def embed(self, users: np.ndarray, exclude_items: np.ndarray | None = None) -> np.ndarray:
        """:meth:`forward` in eval mode without autograd, float32 numpy (B, m)."""
        was = self.tower.training
        self.tower.eval()
        users = np.asarray(users, np.int64)
        out = []
        for lo in range(0, users.size, self.batch_size):
            ex = None if exclude_items is None else exclude_items[lo : lo + self.batch_size]
            out.append(self(users[lo : lo + self.batch_size], ex).float().numpy())
        self.tower.train(was)
        m = out[0].shape[1] if out else 0
        return np.concatenate(out) if out else np.zeros((0, m), np.float32)

    def embed_all(self) -> np.ndarray:
        """Universal embeddings of every user of the dataset, float32 (n_users, m)."""
        return np.ascontiguousarray(self.embed(np.arange(self.ds.n_users)), dtype=np.float32)
