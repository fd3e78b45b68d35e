"""Stage-1 training throughput (samples/s) and peak RSS, beside a floor and the public peer.

Per dataset and per ``--negatives`` value (default 3 and 100: the peer's published figures
are at 3 and 100 negatives per positive) three engines run, each in its own subprocess so
that its peak RSS is its own, alternating ``--rounds`` times (best round kept, the machine
is shared):

- ``ralm``: the real training step of ``ralm train user`` (``UserTrainTask.make_batch``:
  gather with target exclusion and eq. 3 negatives, then ``train_step``: tower forward,
  sampled softmax, backward, Adam), batch building included;
- ``floor``: a minimal hand-written two-tower step of the same shapes in plain PyTorch
  (``nn.Embedding`` / ``nn.EmbeddingBag(mean)`` with offsets per field, fields summed, the
  same MLP, 1 + K gathered item rows, cross-entropy, ``torch.optim.Adam``) on batches
  collated before the clock starts;
- ``peer`` (with ``--peer DIR``): torch-rechub's ``YoutubeDNN`` trained by its own
  ``MatchTrainer.train_one_epoch`` (list-wise mode 2, its default Adam) on the same rows,
  histories padded to its example's ``seq_max_len`` 50, the same eq. 3 negatives, batches
  collated before the clock starts (its DataLoader is not timed). Install it outside the
  project (it is not a dependency; ``--no-deps`` keeps pip away from torch)::

      pip install --no-deps --target /tmp/peer torch-rechub pandas

  ``--peer-dim 16 --peer-mlp 128,64,16`` reproduces its ML-1M example's shapes instead of
  ralm's (dim 128, MLP [256]).

Prepare the data first (neither is committed to the repository)::

    ralm data prepare movielens-100k --out /tmp/ml100k
    ralm data synth --preset wechat --users 200000 --format encoded --out /tmp/wechat

Run::

    python benchmarks/bench_user.py --ml100k /tmp/ml100k --wechat /tmp/wechat --steps 100 \
        --threads 1 --peer /tmp/peer
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch
from torch import nn

PEER_SEQ_LEN = 50  # torch-rechub's ML-1M example: gen_model_input(..., seq_max_len=50)
N_BATCHES = 40  # distinct pre-collated batches cycled by the floor and the peer


def _setup(path: str, negatives: int, batch_size: int) -> dict[str, Any]:
    """Dataset, epoch rows and the eq. 3 sampler shared by every engine."""
    from ralm.data.encoded import EncodedDataset
    from ralm.user.config import UserTrainConfig
    from ralm.user.examples import epoch_examples, positive_pairs
    from ralm.user.sampler import LogUniformSampler

    ds = EncodedDataset.load(path)
    users, items = positive_pairs(ds)
    tc = UserTrainConfig(batch_size=batch_size, n_negatives=negatives)
    sampler = LogUniformSampler(ds.n_items, ds.item_popularity_rank())
    rng = np.random.default_rng(0)
    eu, ei = epoch_examples(users, items, tc.max_pos_per_user, rng)
    return {
        "ds": ds,
        "tc": tc,
        "sampler": sampler,
        "rng": rng,
        "eu": eu,
        "ei": ei,
        "train_rows": users.size,
    }


def _rows(env: dict[str, Any], step: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    eu, ei = env["eu"], env["ei"]
    lo = (step * batch_size) % max(eu.size - batch_size, 1)
    return eu[lo : lo + batch_size], ei[lo : lo + batch_size]


def _timed(step: Any, warmup: int, steps: int) -> tuple[float, list[float]]:
    for s in range(warmup):
        step(s)
    t = time.perf_counter()
    losses = [step(s) for s in range(warmup, warmup + steps)]
    return time.perf_counter() - t, losses


def run_ralm(env: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    """The real stage-1 step (batch building included)."""
    from ralm.data.batching import gather_users
    from ralm.user.config import UserModelConfig
    from ralm.user.optim import StageOneOptimizer
    from ralm.user.task import UserTrainTask
    from ralm.user.tower import UserItemModel
    from ralm.user.train import train_step

    ds, tc, sampler, rng = env["ds"], env["tc"], env["sampler"], env["rng"]
    cfg = UserModelConfig(dim=a.dim, sparse_grad=False if a.dense else None)
    torch.manual_seed(0)
    net = UserItemModel(ds.fields, ds.n_items, cfg)
    opt = StageOneOptimizer(net, tc)
    task = UserTrainTask(net, sampler, tc)

    def step(s: int) -> float:
        bu, bi = _rows(env, s, a.batch_size)
        return train_step(task, opt, task.make_batch(ds, bu, bi, rng))

    train_s, losses = _timed(step, a.warmup, a.steps)
    t = time.perf_counter()
    for s in range(a.steps):
        bu, bi = _rows(env, s, a.batch_size)
        gather_users(ds, bu, exclude_items=bi)
        sampler.sample((bu.size, tc.n_negatives), rng)
    data_s = time.perf_counter() - t
    return {
        "optimizer": "lazy Adam" if net.item_embedding.sparse else "dense Adam",
        "train_s": train_s,
        "data_ms_per_step": round(1000 * data_s / a.steps, 2),
        "first_loss": round(losses[0], 4),
        "last_loss": round(losses[-1], 4),
    }


def _collated(
    env: dict[str, Any], a: argparse.Namespace
) -> list[tuple[Any, np.ndarray, np.ndarray]]:
    """``N_BATCHES`` ralm batches (target excluded) with eq. 3 negatives, built up front."""
    from ralm.data.batching import gather_users

    out = []
    for s in range(N_BATCHES):
        bu, bi = _rows(env, s, a.batch_size)
        neg = env["sampler"].sample((bu.size, env["tc"].n_negatives), env["rng"])
        out.append((gather_users(env["ds"], bu, exclude_items=bi), bi, neg))
    return out


class FloorModel(nn.Module):
    """Plain two-tower stage 1: a table per field, fields summed, MLP; item-ID table."""

    def __init__(self, ds: Any, dim: int, hidden: list[int]) -> None:
        super().__init__()
        self.uni = nn.ModuleDict(
            {f.name: nn.Embedding(f.vocab_size, dim) for f in ds.fields if f.kind == "univalent"}
        )
        self.multi = nn.ModuleDict(
            {
                f.name: nn.EmbeddingBag(f.vocab_size, dim, mode="mean")
                for f in ds.fields
                if f.kind == "multivalent"
            }
        )
        n_cont = sum(f.kind == "continuous" for f in ds.fields)
        self.cont = nn.Linear(n_cont, dim) if n_cont else None
        layers: list[nn.Module] = []
        d = dim
        for w in hidden:
            layers += [nn.Linear(d, w), nn.ReLU()]
            d = w
        self.mlp = nn.Sequential(*layers, nn.Linear(d, dim))
        self.items = nn.Embedding(ds.n_items, dim)

    def forward(self, batch: Any, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        h = sum(t(batch.univalent[k]) for k, t in self.uni.items())  # (B, d)
        for k, t in self.multi.items():
            h = h + t(*batch.multivalent[k])  # (B, d)
        if self.cont is not None:
            h = h + self.cont(batch.continuous)
        u = self.mlp(h)  # (B, d)
        cand = self.items(torch.cat([pos[:, None], neg], dim=1))  # (B, 1+K, d)
        logits = torch.einsum("bd,bkd->bk", u, cand)  # (B, 1+K)
        return nn.functional.cross_entropy(logits, torch.zeros_like(pos))


def run_floor(env: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    """The plain-PyTorch floor on pre-collated batches."""
    batches = [(b, torch.from_numpy(p), torch.from_numpy(n)) for b, p, n in _collated(env, a)]
    torch.manual_seed(0)
    model = FloorModel(env["ds"], a.dim, [256])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(s: int) -> float:
        loss = model(*batches[s % len(batches)])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())

    train_s, losses = _timed(step, a.warmup, a.steps)
    return {
        "train_s": train_s,
        "first_loss": round(losses[0], 4),
        "last_loss": round(losses[-1], 4),
    }


def run_peer(env: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    """torch-rechub's YoutubeDNN, trained by its MatchTrainer on pre-collated batches."""
    sys.path.insert(0, a.peer)
    from torch_rechub.basic.features import DenseFeature, SequenceFeature, SparseFeature
    from torch_rechub.models.matching import YoutubeDNN
    from torch_rechub.trainers import MatchTrainer

    ds, dim = env["ds"], a.peer_dim or a.dim
    cont = [f.name for f in ds.fields if f.kind == "continuous"]
    feats: list[Any] = []
    for f in ds.fields:  # item codes are item + 1 in the history: share the item table
        if f.kind == "univalent":
            feats.append(SparseFeature(f.name, vocab_size=f.vocab_size, embed_dim=dim))
        elif f.kind == "multivalent":
            shared = "item" if f.item_history else None
            feats.append(
                SequenceFeature(
                    f.name,
                    vocab_size=f.vocab_size,
                    embed_dim=dim,
                    pooling="mean",
                    shared_with=shared,
                    padding_idx=0,
                )
            )
    feats += [DenseFeature(name) for name in cont]
    item = [SparseFeature("item", vocab_size=ds.n_items + 1, embed_dim=dim)]
    neg_f = [
        SequenceFeature(
            "neg_items",
            vocab_size=ds.n_items + 1,
            embed_dim=dim,
            pooling="concat",
            shared_with="item",
        )
    ]
    hidden = [int(w) for w in a.peer_mlp.split(",")] if a.peer_mlp else [256, dim]

    def pad(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """CSR bag -> (B, <= 50) padded with 0, the last 50 values of every row."""
        ends = torch.cat([offsets[1:], offsets.new_tensor([values.numel()])])
        rows = [
            values[max(s, e - PEER_SEQ_LEN) : e]
            for s, e in zip(offsets.tolist(), ends.tolist(), strict=True)
        ]
        return nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=0)

    batches = []
    for b, p, n in _collated(env, a):
        x: dict[str, torch.Tensor] = dict(b.univalent)
        for name, (v, o) in b.multivalent.items():
            x[name] = pad(v, o)
        for j, name in enumerate(cont):
            x[name] = b.continuous[:, j]
        x["item"] = torch.from_numpy(p + 1)
        x["neg_items"] = torch.from_numpy(n + 1)
        batches.append((x, torch.zeros(p.size, dtype=torch.long)))
    torch.manual_seed(0)
    model = YoutubeDNN(feats, item, neg_f, user_params={"dims": hidden}, temperature=0.02)
    trainer = MatchTrainer(model, mode=2, optimizer_params={"lr": 1e-3, "weight_decay": 1e-6})
    schedule = [batches[s % len(batches)] for s in range(a.warmup + a.steps)]
    trainer.train_one_epoch(schedule[: a.warmup])
    t = time.perf_counter()
    loss = trainer.train_one_epoch(schedule[a.warmup :])
    return {
        "train_s": time.perf_counter() - t,
        "peer_dim": dim,
        "peer_mlp": hidden,
        "last_loss": round(float(loss), 4),
    }


ENGINES = {"ralm": run_ralm, "base": run_ralm, "floor": run_floor, "peer": run_peer}


def run_one(path: str, engine: str, a: argparse.Namespace) -> dict[str, Any]:
    """One engine on one dataset at ``a.negatives`` negatives; returns its figures."""
    torch.set_num_threads(a.threads)
    env = _setup(path, int(a.negatives), a.batch_size)
    res = ENGINES[engine](env, a)
    train_s = res.pop("train_s")
    ds = env["ds"]
    return {
        "engine": engine,
        "dataset": ds.name,
        "users": ds.n_users,
        "items": ds.n_items,
        "negatives": int(a.negatives),
        "samples_per_s": round(a.steps * a.batch_size / train_s, 1),
        "ms_per_step": round(1000 * train_s / a.steps, 2),
        "epoch_minutes_est": round(env["eu"].size * train_s / (a.steps * a.batch_size) / 60, 2),
        **res,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ml100k", help="encoded ML-100K folder (ralm data prepare)")
    p.add_argument("--wechat", help="encoded wechat-preset folder (ralm data synth)")
    p.add_argument("--steps", type=int, default=100, help="timed steps per engine")
    p.add_argument("--warmup", type=int, default=10, help="untimed warm-up steps")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--dense", action="store_true", help="ralm: force dense Adam (default: auto)")
    p.add_argument("--negatives", default="3,100", help="comma list of negatives per positive")
    p.add_argument("--rounds", type=int, default=1, help="alternating rounds (best kept)")
    p.add_argument("--peer", help="folder holding torch_rechub (pip install --target DIR)")
    p.add_argument("--peer-dim", type=int, default=0, help="peer embedding dim (0 = --dim)")
    p.add_argument("--peer-mlp", default="", help="peer MLP dims, e.g. 128,64,16")
    p.add_argument("--base-src", help="also time ralm from this source folder (before/after)")
    p.add_argument("--engines", default="ralm,base,floor,peer", help=argparse.SUPPRESS)
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one engine, print JSON
    p.add_argument("--engine", default="ralm", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(run_one(a.one, a.engine, a)))
        return
    paths = [x for x in (a.ml100k, a.wechat) if x]
    if not paths:
        p.error("give --ml100k and/or --wechat")
    engines = [
        e for e in a.engines.split(",") if (e != "peer" or a.peer) and (e != "base" or a.base_src)
    ]
    env = dict(os.environ)
    best: dict[tuple[str, int, str], dict[str, Any]] = {}
    for _ in range(a.rounds):
        for path in paths:
            for neg in (int(x) for x in a.negatives.split(",")):
                for engine in engines:
                    cmd = [sys.executable, __file__, "--one", path, "--engine", engine]
                    for flag in ("steps", "warmup", "batch_size", "dim", "threads", "peer_dim"):
                        cmd += [f"--{flag.replace('_', '-')}", str(getattr(a, flag))]
                    cmd += ["--negatives", str(neg), "--peer-mlp", a.peer_mlp]
                    cmd += ["--peer", a.peer] if a.peer else []
                    cmd += ["--dense"] if a.dense else []
                    if engine == "base":  # the other source tree first on the path
                        env["PYTHONPATH"] = os.pathsep.join(
                            [a.base_src, os.environ.get("PYTHONPATH", "")]
                        )
                    else:
                        env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
                    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
                    if run.returncode != 0:
                        sys.exit(f"{engine} on {path} failed:\n{run.stderr[-3000:]}")
                    r = json.loads(run.stdout.strip().splitlines()[-1])
                    print(json.dumps(r), flush=True)
                    key = (path, neg, engine)
                    if key not in best or r["samples_per_s"] > best[key]["samples_per_s"]:
                        best[key] = r
    print(
        f"\nbest of {a.rounds} round(s), {a.steps} steps, batch {a.batch_size}, "
        f"dim {a.dim}, {a.threads} thread(s); ratio = ralm / other (>= 1: ralm faster)"
    )
    head = f"{'dataset':>10} {'neg':>4} {'ralm/s':>9} {'RSS MiB':>8}"
    head += f" {'base/s':>9} {'ralm/base':>9}" if "base" in engines else ""
    head += f" {'floor/s':>9} {'ralm/floor':>10}" if "floor" in engines else ""
    head += f" {'peer/s':>9} {'ralm/peer':>9} {'peer RSS':>8}" if a.peer else ""
    print(head)
    for path in paths:
        for neg in (int(x) for x in a.negatives.split(",")):
            r = best[(path, neg, "ralm")]
            line = f"{r['dataset'][:10]:>10} {neg:>4} {r['samples_per_s']:>9.0f}"
            line += f" {r['peak_rss_mib']:>8.0f}"
            if "base" in engines:
                q = best[(path, neg, "base")]
                line += (
                    f" {q['samples_per_s']:>9.0f} {r['samples_per_s'] / q['samples_per_s']:>9.2f}"
                )
            if "floor" in engines:
                f = best[(path, neg, "floor")]
                line += (
                    f" {f['samples_per_s']:>9.0f} {r['samples_per_s'] / f['samples_per_s']:>10.2f}"
                )
            if a.peer:
                q = best[(path, neg, "peer")]
                line += (
                    f" {q['samples_per_s']:>9.0f} {r['samples_per_s'] / q['samples_per_s']:>9.2f}"
                )
                line += f" {q['peak_rss_mib']:>8.0f}"
            print(line)


if __name__ == "__main__":
    main()
