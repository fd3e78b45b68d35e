"""The ANN pre-filter of candidate retrieval: retrieval vectors and their faiss index.

Exact scoring touches every item's k centroids per request (a pass over the whole
centroid table); for a big catalogue the service can instead retrieve C candidates per
request with an approximate nearest-neighbour search and score only those with the ONE
scorer (:mod:`ralm.serve.candidates`). This module holds the approximate part.

**What is indexed.** The look-alike score of a user ``e`` against item i is (spec
section 2, :mod:`ralm.lookalike.scorer`)::

    s_i = t_i * (alpha cos(e, g_i) + beta cos(e, E_local,i)) + p_i

with ``E_local`` the attention-weighted mean of the item's centroids (weights
``n_j exp(tanh(q . c_j))``: the size prior times a user-dependent factor within
[e^-1, e^1]), ``t_i`` the 'shrink' prior's multiplier (or 1) and ``p_i`` the audience-size
prior ``gamma log(1 + n_seeds)`` (or 0). Freezing the attention at its user-independent
part (the size-weighted mean ``m_i`` of the centroids) makes the score linear in the unit
user vector ``ê``::

    s_i ~ v_i . ê + p_i,      v_i = t_i (alpha ĝ_i + beta m̂_i)     ("mean", the default)

so retrieval is a maximum inner product search of ``q = [ê, 1]`` against
``x_i = [v_i, p_i]`` (the prior is the extra dimension). Other kinds: ``"global"``
(``v_i = t_i (alpha + beta) ĝ_i``, one vector per item, ignores the centroids) and
``"centroids"`` (one vector per valid centroid, ``t_i (alpha ĝ_i + beta ĉ_ij)``, an item
scored by its best centroid: k times the memory). benchmarks/bench_ann.py measures them.

**The index.** MIPS is turned into a nearest-neighbour search on a sphere by the usual
extra coordinate ``sqrt(M^2 - |x_i|^2)`` (``M`` the norm bound fixed at training, the
query gets 0 there): every stored vector has norm M, so the inner product orders items
exactly as the distance does and the IVF coarse quantizer clusters them evenly. A faiss
``IndexIVFFlat`` (inner product, ``nlist`` lists, ``nprobe`` probed) with a hash-table
direct map supports adding and removing single ids, so a new index version updates only
the changed items; a small catalogue (fewer than ``MIN_IVF_VECTORS`` vectors) uses an
exact flat index with the same interface.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import Any, Literal

import faiss
import numpy as np
import torch

log = logging.getLogger(__name__)

CandidateKind = Literal["mean", "global", "centroids"]
MIN_IVF_VECTORS = 4096  # below this an exact flat index is used (as cheap, and exact)
POINTS_PER_LIST = 40  # training vectors per IVF list (faiss wants >= 39; samples <= this)
NORM_HEADROOM = 1.05  # M = 1.05 x the largest norm at training (later items may grow)


def auto_nlist(n: int) -> int:
    """IVF lists for n vectors: ``2 sqrt(n)`` (2,000 at 1M), at least 1."""
    return max(1, int(2 * math.sqrt(max(n, 1))))


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to norm 1 (zero rows stay zero): (N, h) -> (N, h)."""
    n = x.norm(dim=-1, keepdim=True)  # (N, 1)
    return x / torch.clamp(n, min=1e-12)


def _priors(
    scorer: Any, sizes: torch.Tensor, age: torch.Tensor | None = None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The scorer's per-item multiplier ``t`` and offset ``p`` (None when it has none)."""
    extra = {} if age is None else {"age": age}
    if getattr(scorer, "shrinks", False):
        return scorer.shrink_weight(sizes, **extra).to(torch.float32), None  # (I,)
    term = getattr(scorer, "seed_prior_term", None)
    prior = term(sizes, **extra) if term is not None else None
    return None, None if prior is None else prior.to(torch.float32)  # (I,)


@torch.no_grad()
def item_vectors(
    scorer: Any,
    centroids: torch.Tensor,
    mask: torch.Tensor,
    global_vec: torch.Tensor,
    sizes: torch.Tensor,
    kind: CandidateKind = "mean",
    age: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Retrieval vectors ``[v, p]`` of items (see the module docstring).

    Args:
        scorer: the stage-2 model (``config.alpha / beta / use_local / use_global``,
            ``log_prior``, ``seed_prior_term``, ``shrinks`` / ``shrink_weight``); a
            stand-in without them gets the paper's weights and no priors.
        centroids: (I, k, h) seed centroids.
        mask: (I, k) bool valid centroids.
        global_vec: (I, h) global-attention vectors.
        sizes: (I, k) cluster sizes.
        kind: "mean", "global" or "centroids".
        age: optional (I,) seconds since each item's first click (the prior's young-item
            rule, as the scorer applies it when the vectors are built).

    Returns:
        ``(vectors float32 (V, h + 1), owner int64 (V,))``: V = I for "mean" / "global"
        (owner = arange(I)); one row per valid centroid for "centroids" (owner = its item,
        slots in order).
    """
    cfg = getattr(scorer, "config", None)
    alpha = float(getattr(cfg, "alpha", 0.3)) if getattr(cfg, "use_global", True) else 0.0
    beta = float(getattr(cfg, "beta", 0.7)) if getattr(cfg, "use_local", True) else 0.0
    n_i = int(centroids.shape[0])
    c = centroids.to(torch.float32)
    g = _unit(global_vec.to(torch.float32))  # (I, h)
    scale, prior = _priors(scorer, sizes, age)
    p = torch.zeros(n_i) if prior is None else prior  # (I,)
    t = torch.ones(n_i) if scale is None else scale  # (I,)
    if kind == "global":
        v = (alpha + beta) * g * t[:, None]  # (I, h)
        return torch.cat([v, p[:, None]], dim=1).numpy(), np.arange(n_i, dtype=np.int64)
    if kind == "centroids":
        sel = mask.nonzero()  # (V, 2) valid (item, slot) pairs, slots in order
        it, sl = sel[:, 0], sel[:, 1]
        v = (alpha * g[it] + beta * _unit(c[it, sl])) * t[it, None]  # (V, h)
        return torch.cat([v, p[it, None]], dim=1).numpy(), it.numpy().astype(np.int64)
    if kind != "mean":
        raise ValueError(f"candidate vectors must be mean, global or centroids, got {kind!r}")
    w = mask.to(torch.float32)  # (I, k) the attention's user-independent part
    log_prior = getattr(scorer, "log_prior", None)
    lp = log_prior(sizes) if log_prior is not None else None
    if lp is not None:
        w = w * torch.exp(lp.to(torch.float32))
    m = torch.einsum("ik,ikh->ih", w, c)  # (I, h) size-weighted mean direction
    v = (alpha * g + beta * _unit(m)) * t[:, None]  # (I, h)
    return torch.cat([v, p[:, None]], dim=1).numpy(), np.arange(n_i, dtype=np.int64)


def query_vectors(e_u: torch.Tensor) -> np.ndarray:
    """Queries ``[ê, 1]`` of transformed users: (B, h) -> float32 (B, h + 1)."""
    e = _unit(e_u.to(torch.float32))  # (B, h)
    return torch.cat([e, torch.ones(e.shape[0], 1)], dim=1).numpy()


class CandidateIndex:
    """Inner-product search over retrieval vectors, by int64 id, with add and remove.

    Build it with :meth:`build`; the norm bound ``M`` and the IVF lists are fixed then.
    A vector added later with a norm above M gets completion 0: its inner product with
    every query stays exact, only its list assignment is slightly worse.

    Args:
        index: the faiss index (ids are the caller's).
        dim: dimension of the vectors given (without the completion coordinate).
        bound: the norm bound M.
        n_trained: vectors present when it was built (the retrain rule compares to it).
    """

    def __init__(self, index: Any, dim: int, bound: float, n_trained: int) -> None:
        self.index = index
        self.dim = dim
        self.bound = bound
        self.n_trained = n_trained

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: np.ndarray,
        nprobe: int = 32,
        nlist: int | None = None,
        seed: int = 0,
    ) -> CandidateIndex:
        """Train (IVF) on ``vectors`` (N, d) and add them under ``ids`` (N,).

        Args:
            vectors: float32 (N, d) retrieval vectors.
            ids: int64 (N,) their ids.
            nprobe: IVF lists probed per query.
            nlist: IVF lists (None: :func:`auto_nlist`); ignored below ``MIN_IVF_VECTORS``.
            seed: seed of the coarse k-means.
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n, d = vectors.shape
        norms = np.linalg.norm(vectors, axis=1) if n else np.zeros(0, np.float32)
        bound = float(max(norms.max(initial=0.0) * NORM_HEADROOM, 1e-6))
        if n < MIN_IVF_VECTORS:
            out = cls(faiss.IndexIDMap2(faiss.IndexFlatIP(d + 1)), d, bound, n)
        else:
            lists = min(nlist or auto_nlist(n), max(1, n // POINTS_PER_LIST))
            quantizer = faiss.IndexFlatIP(d + 1)
            index = faiss.IndexIVFFlat(quantizer, d + 1, lists, faiss.METRIC_INNER_PRODUCT)
            index.cp.niter = 10
            index.cp.seed = seed
            index.cp.max_points_per_centroid = POINTS_PER_LIST
            index.nprobe = min(nprobe, lists)
            out = cls(index, d, bound, n)
            take = min(n, lists * POINTS_PER_LIST)
            rng = np.random.default_rng(seed)
            sample = vectors if take == n else vectors[np.sort(rng.choice(n, take, False))]
            index.train(out._complete(sample))
            index.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
        out.add(vectors, ids)
        log.info(
            "candidate index: %d vectors of dim %d, %s", n, d,
            "exact (flat)" if out.exact
            else f"IVF {out.index.nlist} lists, nprobe {out.index.nprobe}",
        )  # fmt: skip
        return out

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def exact(self) -> bool:
        """True for the flat index (every search is exhaustive)."""
        return not hasattr(self.index, "nlist")

    def _complete(self, vectors: np.ndarray) -> np.ndarray:
        """``[x, sqrt(M^2 - |x|^2)]``: (N, d) -> float32 (N, d + 1), rows of norm M (or
        more, for a vector longer than M: completion 0)."""
        sq = np.einsum("nd,nd->n", vectors, vectors)  # (N,)
        extra = np.sqrt(np.clip(self.bound**2 - sq, 0.0, None))[:, None]
        return np.ascontiguousarray(np.hstack([vectors, extra]), dtype=np.float32)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add vectors (N, d) under new ids (N,) (an id must not be present already)."""
        if len(ids):
            self.index.add_with_ids(self._complete(vectors), np.ascontiguousarray(ids, np.int64))

    def remove(self, ids: np.ndarray) -> None:
        """Remove the given ids (N,) (absent ids are ignored)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.size:
            self.index.remove_ids(faiss.IDSelectorArray(ids.size, faiss.swig_ptr(ids)))

    def search(self, queries: np.ndarray, n: int) -> np.ndarray:
        """Ids (B, n) of the best inner products of queries (B, d), -1 where fewer exist."""
        if self.ntotal == 0 or n <= 0:
            return np.full((queries.shape[0], max(n, 0)), -1, dtype=np.int64)
        q = np.ascontiguousarray(np.hstack([queries, np.zeros((len(queries), 1))]), np.float32)
        _, ids = self.index.search(q, n)
        return np.asarray(ids, dtype=np.int64)


def gather_terms(parts: Mapping[int, Any], part: np.ndarray, pos: np.ndarray) -> Any:
    """The prepared terms of chosen items, taken from several chunks' terms, in order.

    Works on any dataclass of per-item tensors (the scorer's ``ItemTerms``): a tensor
    whose first axis is the chunk's item count is indexed by item, one whose first axis is
    items x k (the flat centroid table) by the item's k rows; other fields are kept.

    Args:
        parts: chunk number -> its prepared terms (``LookalikeModel.prepare_items``).
        part: int64 (C,) chunk of each chosen item (ascending runs are fastest).
        pos: int64 (C,) the item's position in that chunk's terms.
    """
    pieces = []
    for j in np.unique(part).tolist():
        sel = torch.from_numpy(np.ascontiguousarray(pos[part == j], dtype=np.int64))
        pieces.append(_take(parts[j], sel))
    if len(pieces) == 1:
        return pieces[0]
    out = {}
    for f in dataclasses.fields(pieces[0]):
        vals = [getattr(p, f.name) for p in pieces]
        out[f.name] = torch.cat(vals) if isinstance(vals[0], torch.Tensor) else vals[0]
    return dataclasses.replace(pieces[0], **out)


def _take(terms: Any, sel: torch.Tensor) -> Any:
    """Rows ``sel`` (C,) of one chunk's terms (see :func:`gather_terms`)."""
    n_items, k = int(terms.n_items), int(getattr(terms, "k", 1))
    out = {}
    for f in dataclasses.fields(terms):
        v = getattr(terms, f.name)
        if not isinstance(v, torch.Tensor) or v.dim() == 0:
            continue
        if v.shape[0] == n_items:
            out[f.name] = v.index_select(0, sel)  # (C, ...)
        elif v.shape[0] == n_items * k:
            rows = v.view(n_items, k, *v.shape[1:]).index_select(0, sel)  # (C, k, ...)
            out[f.name] = rows.reshape(sel.numel() * k, *v.shape[1:])  # (C*k, ...)
    return dataclasses.replace(terms, **out)
