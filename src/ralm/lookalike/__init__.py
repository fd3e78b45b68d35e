"""Stage 2: look-alike learning (transforming layer, seed clustering, attention, scorer).

Public API (see docs/LOOKALIKE.md)::

    LookalikeConfig, LookalikeTrainConfig      configs (paper defaults)
    LookalikeModel                             transform / item_global / score / score_pairs
    cluster_seeds, SeedClusters                per-item faiss k-means of seed embeddings
    SeedIndex, IndexUpdate                     THE stage-2 artifact (training, eval, serving)
    index_items, build_seed_index              THE index builder (and its whole-table form)
    LookalikeTrainTask, LookalikeBatch         forward(batch) -> loss (through score_pairs)
    train_lookalike                            iterative k-means + gradient training
    load_lookalike_model                       a trained run folder -> (model, config)
"""

from ralm.lookalike.checkpoint import load_lookalike_model
from ralm.lookalike.clustering import SeedClusters, average_seeds, cluster_seeds
from ralm.lookalike.config import LookalikeConfig, LookalikeTrainConfig
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.samples import SeedSets, seed_sets
from ralm.lookalike.seed_index import IndexUpdate, SeedIndex, build_seed_index, index_items
from ralm.lookalike.task import LookalikeBatch, LookalikeTrainTask
from ralm.lookalike.train import LookalikeTrainResult, train_lookalike

__all__ = [
    "IndexUpdate",
    "LookalikeBatch",
    "LookalikeConfig",
    "LookalikeModel",
    "LookalikeTrainConfig",
    "LookalikeTrainResult",
    "LookalikeTrainTask",
    "SeedClusters",
    "SeedIndex",
    "SeedSets",
    "average_seeds",
    "build_seed_index",
    "cluster_seeds",
    "index_items",
    "load_lookalike_model",
    "seed_sets",
    "train_lookalike",
]
