"""Candidate retrieval (ANN pre-filter + exact scoring) against exact scoring, 1M items.

Not a test. A synthetic index with the structure of real look-alike data (an untrained
``LookalikeModel`` of the paper's shape, k = 20, h = 128): ``--tastes`` taste clusters
(ReLU-like centres); every item draws its centroids from 1-3 tastes (Dirichlet weights)
plus noise (rows of a fixed Gaussian pool), audiences are log-normal (median 200 seeds,
clipped to [10, 3M]) and split over the centroids; users mix two tastes plus noise.
Uniform noise would have no neighbourhoods for any ANN to find; this has the kind real
embeddings have.

Printed, timed the way the service scores (a worker thread, the CLI's OpenMP wait policy,
``--threads`` torch and faiss threads), medians of interleaved runs:

* floor: the scorer's own matmul ``(I*k, h) @ (h, 2B)`` over the whole table in its
  chunks, in the table's dtype (``--dtype``, bfloat16 by default so 1M items fit in
  about 8 GiB), and one memory pass over the table;
* exact: ``LookalikeModel.score_prepared`` over every chunk's prepared terms, then one
  ``topk`` (the loop of ``ralm.serve.scoring.score_batch``);
* ANN + rerank, per (C, nprobe): ``CandidateIndex.search`` (faiss IVF over the "mean"
  retrieval vectors of ``ralm.serve.candidate_index``), the candidates' prepared terms
  gathered from their chunks (``gather_terms``), ``score_prepared`` on them and ``topk``
  (the path of ``ralm.serve.scoring.score_candidates``), per request; its latency at
  batch 1 and 32, the ratio to exact, and recall@50 against exact scoring;
* the retrieval index: build time (coarse k-means + adding every vector) and an
  incremental update of ``--changed`` items (remove + add) as a publish does.

Run (1M items: about 25 minutes on the loaded 2-core host, 10 of them generating the
index; peak RSS 9.3 GiB)::

    python benchmarks/bench_ann.py                       # 1M items, bfloat16 table
    python benchmarks/bench_ann.py --items 100000 --tastes 100   # a smaller run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

from ralm.common.threads import apply_wait_policy

apply_wait_policy()  # before torch loads: the service's OpenMP wait policy

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

# the service-like worker-thread timing, written once
from bench_scorer import in_worker  # noqa: E402

TARGET_RECALL, TARGET_SPEEDUP = 0.95, 10.0  # issue 9, item 3


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1000, out


def taste_centres(n: int, h: int, rng: np.random.Generator) -> torch.Tensor:
    return torch.from_numpy((np.maximum(rng.normal(size=(n, h)), 0) * 1.5).astype("f4"))


def synth_items(
    rng: np.random.Generator,
    n: int,
    k: int,
    centres: torch.Tensor,
    noise: torch.Tensor,
    sigma: float = 0.35,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centroids (n, k, h) from 1-3 tastes per item, mask (n, k), sizes (n, k).

    A centroid is ``relu(centre of one of the item's tastes + sigma * a noise row)``; the
    noise rows are drawn from a fixed pool (``noise``, (P, h)) so that a 1M-item index is
    generated at memory speed (a fresh (n, k, h) normal sample per chunk took most of the
    set-up time on the shared host).
    """
    most = 3
    n_t = rng.integers(1, most + 1, n)
    tastes = rng.integers(0, centres.shape[0], (n, most))
    w = rng.dirichlet(np.ones(most), n)
    w[np.arange(most)[None, :] >= n_t[:, None]] = 0
    cum = np.cumsum(w / w.sum(1, keepdims=True), axis=1)  # (n, 3)
    slot = (rng.random((n, k))[:, :, None] > cum[:, None, :]).sum(-1).clip(0, most - 1)
    which = torch.from_numpy(np.take_along_axis(tastes, slot, 1).reshape(-1))  # (n*k,)
    cen = centres.index_select(0, which)  # (n*k, h)
    pick = torch.from_numpy(rng.integers(0, noise.shape[0], n * k))
    cen.add_(noise.index_select(0, pick), alpha=sigma).relu_()
    n_seeds = np.clip(rng.lognormal(np.log(200), 1.2, n), 10, 3e6)
    sizes = np.maximum(1, np.round(rng.dirichlet(np.ones(k), n) * n_seeds[:, None]))
    mask = torch.ones(n, k, dtype=torch.bool)
    return cen.view(n, k, -1), mask, torch.from_numpy(sizes.astype(np.int64))


def synth_users(rng: np.random.Generator, n: int, centres_t: torch.Tensor) -> torch.Tensor:
    """Transformed users (n, h): a mix of two tastes plus noise, ReLU-like."""
    centres = centres_t.numpy()
    t = rng.integers(0, len(centres), (n, 2))
    a = rng.random((n, 1)).astype(np.float32)
    mix = a * centres[t[:, 0]] + (1 - a) * centres[t[:, 1]]
    return torch.from_numpy(np.maximum(mix + 0.5 * rng.normal(size=mix.shape), 0).astype("f4"))


def recall(got: np.ndarray | list[np.ndarray], ref: np.ndarray) -> float:
    """Mean share of each row of ``ref`` (U, 50) found in the same row of ``got``."""
    hits = [np.intersect1d(g, r).size / r.size for g, r in zip(got, ref, strict=True)]
    return round(float(np.mean(hits)), 4)


def compare_kinds(
    model: Any,
    parts: dict[int, Any],
    mean: np.ndarray,
    kinds: dict[str, list[np.ndarray]],
    users: torch.Tensor,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Recall@50 of an exact (flat) inner-product search over each kind of vector.

    On the first ``--kinds-items`` items: which retrieval vector ranks the exact top 50
    inside its top C, before any IVF approximation. "mean without prior" drops the
    audience-prior coordinate (is the extra dimension needed?).
    """
    from ralm.serve.candidate_index import query_vectors

    n_parts = max(1, -(-args.kinds_items // args.chunk))
    with torch.no_grad():
        s = torch.cat([model.score_prepared(users, parts[j]) for j in range(n_parts)], dim=1)
    ref = s.topk(50, dim=1).indices.numpy()  # (U, 50)
    n_sub = s.shape[1]
    q = query_vectors(users)  # (U, h + 1)
    no_prior = mean[:n_sub].copy()
    no_prior[:, -1] = 0.0
    item_scores = {
        "mean": q @ mean[:n_sub].T,  # (U, I)
        "mean without prior": q @ no_prior.T,
        "global": q @ np.concatenate(kinds["global"]).T,
    }
    owner = np.concatenate(kinds["owner"])  # (V,) sorted
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    cen = np.concatenate(kinds["centroids"])  # (V, h + 1)
    item_scores["centroids (max)"] = np.stack(
        [np.maximum.reduceat(cen @ q[b], starts) for b in range(len(q))]
    )  # (U, I): each item's best centroid
    out: dict[str, Any] = {"items": n_sub, "vectors_per_item": {"centroids": cen.shape[0] / n_sub}}
    for name, sc in item_scores.items():
        order = np.argsort(-sc, axis=1)
        out[name] = {f"C={c}": recall(order[:, :c], ref) for c in (100, 200, 500)}
    return out


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--tastes", type=int, default=1000, help="taste clusters")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--h", type=int, default=128)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--gamma", type=float, default=0.05, help="audience-prior weight")
    p.add_argument("--candidates", type=int, nargs="+", default=[500, 1000, 2000])
    p.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--users", type=int, default=64, help="users for recall / ANN latency")
    p.add_argument("--batch", type=int, default=32, help="the batched figure (0: skip)")
    p.add_argument("--threads", type=int, default=1, help="torch and faiss threads")
    p.add_argument("--repeat", type=int, default=3, help="runs of the exact scorer")
    p.add_argument("--changed", type=int, default=500, help="items of the update figure")
    p.add_argument("--chunk", type=int, default=8192, help="items per index chunk")
    p.add_argument(
        "--kinds-items", type=int, default=49_152, help="items of the vector-kind comparison"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    from ralm.lookalike.config import LookalikeConfig
    from ralm.lookalike.model import LookalikeModel
    from ralm.serve.candidate_index import (
        CandidateIndex,
        gather_terms,
        item_vectors,
        query_vectors,
    )

    n, k, h = args.items, args.k, args.h
    torch.manual_seed(0)
    model = LookalikeModel(LookalikeConfig(m=h, h=h, k=k)).eval()
    with torch.no_grad():
        model.prior_weight.fill_(float(np.log(np.expm1(args.gamma))))  # gamma
    rng = np.random.default_rng(0)
    centres = taste_centres(args.tastes, h, rng)
    noise = torch.from_numpy(rng.standard_normal((65536, h), dtype=np.float32))  # (P, h)
    t0 = time.perf_counter()
    parts: dict[int, Any] = {}
    vecs = []
    kinds: dict[str, list[np.ndarray]] = {"global": [], "centroids": [], "owner": []}
    for j, lo in enumerate(range(0, n, args.chunk)):
        c, m, s = synth_items(rng, min(args.chunk, n - lo), k, centres, noise)
        with torch.no_grad():
            g = model.item_global(c, m, s)  # (Ic, h)
            parts[j] = model.prepare_items(c, m, g, sizes=s, dtype=args.dtype)
        vecs.append(item_vectors(model, c, m, g, s, "mean")[0])
        if lo < args.kinds_items:  # the other kinds, on the first items only
            kinds["global"].append(item_vectors(model, c, m, g, s, "global")[0])
            v, owner = item_vectors(model, c, m, g, s, "centroids")
            kinds["centroids"].append(v)
            kinds["owner"].append(owner + lo)
        del c, m, s, g
    vectors = np.concatenate(vecs)  # (I, h + 1)
    del vecs
    report: dict[str, Any] = {
        "shape": {"items": n, "k": k, "h": h, "tastes": args.tastes, "chunk": args.chunk},
        "dtype": args.dtype,
        "gamma": args.gamma,
        "threads": args.threads,
        "omp_wait_policy": {v: os.environ.get(v) for v in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")},
        "table_gib": n * k * h * parts[0].table.element_size() / 2**30,
        "generate_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(report), flush=True)
    users = synth_users(rng, args.users, centres)  # (U, h)

    def exact(e_u: torch.Tensor) -> torch.Tensor:
        s = torch.cat([model.score_prepared(e_u, t) for t in parts.values()], dim=1)
        return s.topk(50, dim=1).indices  # (B, 50)

    def floor(b: int) -> None:
        rhs = torch.randn(h, 2 * b).to(parts[0].table.dtype)
        step = 1024 * k  # the scorer's chunk of 1,024 items
        for t in parts.values():
            for lo in range(0, t.table.shape[0], step):
                torch.mm(t.table[lo : lo + step], rhs)

    def memory_pass() -> None:
        for t in parts.values():
            t.table.sum()

    # ---- exact scoring and its floors -----------------------------------------------
    def run_exact() -> dict[str, Any]:
        with torch.no_grad():
            ref = exact(users)  # (U, 50) reference top-50, also a warm-up
        out: dict[str, list[float]] = {}
        batches = [1] + ([args.batch] if args.batch else [])
        for _ in range(args.repeat):
            for b in batches:
                e = users[:b]
                with torch.no_grad():
                    for name, fn in (
                        (f"floor_mm_2B_b{b}", lambda b=b: floor(b)),
                        (f"exact_b{b}", lambda e=e: exact(e)),
                    ):
                        out.setdefault(name, []).append(timed(fn)[0])
            out.setdefault("memory_pass", []).append(timed(memory_pass)[0])
        return {"ref": ref, "ms": {name: statistics.median(v) for name, v in out.items()}}

    ex = in_worker(run_exact)
    ref = ex["ref"].numpy()
    ms = {name: round(v, 2) for name, v in ex["ms"].items()}
    report["exact_ms"] = ms
    for b in [1] + ([args.batch] if args.batch else []):
        ms[f"exact_over_floor_b{b}"] = round(ms[f"exact_b{b}"] / ms[f"floor_mm_2B_b{b}"], 2)
    print(json.dumps({"exact_ms": ms}), flush=True)

    report["vector_kinds"] = compare_kinds(model, parts, vectors, kinds, users, args)
    print(json.dumps({"vector_kinds": report["vector_kinds"]}), flush=True)
    del kinds

    # ---- the retrieval index ---------------------------------------------------------
    t_build, index = timed(lambda: CandidateIndex.build(vectors, np.arange(n), seed=0))
    report["index"] = {
        "build_s": round(t_build / 1000, 1),
        "nlist": int(index.index.nlist),
        "vectors_mib": round(vectors.nbytes / 2**20),
    }
    changed = rng.choice(n, min(args.changed, n), replace=False)

    def update() -> None:
        index.remove(changed)
        index.add(vectors[changed], changed)

    report["index"][f"update_{changed.size}_items_ms"] = round(timed(update)[0], 1)
    print(json.dumps({"index": report["index"]}), flush=True)
    q_all = query_vectors(users)  # (U, h + 1)

    def rerank(e_u: torch.Tensor, ids: np.ndarray) -> np.ndarray:
        """Exact top-50 of one user (1, h) among its candidate rows (C,)."""
        ids = ids[ids >= 0]
        part, pos = np.divmod(ids, args.chunk)
        terms = gather_terms(parts, part, pos)
        s = model.score_prepared(e_u, terms)[0]  # (C,) ordered by chunk
        order = ids[np.argsort(part, kind="stable")]
        return order[s.topk(min(50, s.numel())).indices.numpy()]

    def ann(b0: int, b: int, c: int) -> list[np.ndarray]:
        ids = index.search(q_all[b0 : b0 + b], c)  # (b, C)
        return [rerank(users[b0 + i : b0 + i + 1], ids[i]) for i in range(b)]

    def run_ann(c: int, nprobe: int) -> dict[str, Any]:
        index.index.nprobe = nprobe
        with torch.no_grad():
            ann(0, 1, c)  # warm-up
            one, got = [], []
            for u in range(args.users):
                t, top = timed(lambda u=u: ann(u, 1, c))
                one.append(t)
                got.append(top[0])
            batch = []
            if args.batch:
                for _ in range(args.repeat):
                    batch.append(timed(lambda: ann(0, args.batch, c))[0])
        row: dict[str, Any] = {"C": c, "nprobe": nprobe, "recall_at_50": recall(got, ref)}
        row["ann_b1_ms"] = round(statistics.median(one), 2)
        row["speedup_b1"] = round(ms["exact_b1"] / row["ann_b1_ms"], 1)
        if batch:
            row[f"ann_b{args.batch}_ms"] = round(statistics.median(batch), 2)
            row[f"speedup_b{args.batch}"] = round(
                ms[f"exact_b{args.batch}"] / row[f"ann_b{args.batch}_ms"], 1
            )
        met = row["recall_at_50"] >= TARGET_RECALL and row["speedup_b1"] >= TARGET_SPEEDUP
        row["target"] = f"recall >= {TARGET_RECALL} at >= {TARGET_SPEEDUP}x: " + (
            "met" if met else "NOT met"
        )
        return row

    rows = []
    for c in args.candidates:
        for nprobe in args.nprobe:
            row = in_worker(lambda c=c, nprobe=nprobe: run_ann(c, nprobe))
            rows.append(row)
            print(json.dumps(row), flush=True)
    report["ann"] = rows
    report["peak_rss_gib"] = round(rss_gib(), 2)
    print(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()
