"""Models compared by the evaluator, all behind :class:`Recommender`."""

from ralm.evaluation.baselines.base import ItemFallback, RandomRecommender, Recommender
from ralm.evaluation.baselines.popularity import Popularity

__all__ = ["ItemFallback", "Popularity", "RandomRecommender", "Recommender"]
