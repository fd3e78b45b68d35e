"""The experiment runner: every model x every seed x every protocol, then the ablations.

``run_experiment(cfg)`` is the whole evaluation job of the paper's experiment section:
prepare (or load) the dataset, train stage 1 and stage 2 and every baseline for each seed
on the training view (no TEST / COLD_TEST rows), evaluate them under the warm and cold
protocols, run the ablation grid, and write the report folder (``report.md``,
``results.json``, ``config.json``, PNG plots).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ralm.common.progress import progress_disabled
from ralm.evaluation.ablations import run_ablations
from ralm.evaluation.config import ExperimentConfig, load_experiment_config
from ralm.evaluation.evaluator import evaluate
from ralm.evaluation.report import write_report
from ralm.evaluation.runner import DISPLAY, RunContext, load_dataset, split_counts, summarise

log = logging.getLogger(__name__)

__all__ = ["load_experiment_config", "run_experiment", "summarise"]


def run_experiment(cfg: ExperimentConfig, out_dir: str | Path | None = None) -> Path:
    """Run the experiment described by ``cfg`` and write its report.

    Args:
        cfg: the experiment (see :class:`ExperimentConfig`).
        out_dir: report folder (default ``cfg.out_dir / cfg.name``).

    Returns:
        The report folder.
    """
    t_start = time.perf_counter()
    root = Path(out_dir) if out_dir is not None else cfg.out_dir / cfg.name
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ds = load_dataset(cfg.data)
    ctx = RunContext(cfg, ds)
    ctx.timings["data_s"].append(time.perf_counter() - t0)
    log.info("experiment %s on %s: %d users, %d items", cfg.name, ds.name, ds.n_users, ds.n_items)
    tables: dict[str, dict[str, list[dict[str, float]]]] = {p: {} for p in cfg.protocols}
    notes: dict[str, dict[str, str]] = {p: {} for p in cfg.protocols}
    fitted: dict[tuple[str, int], Any] = {}
    jobs = [(seed, name) for seed in cfg.seeds for name in cfg.models]
    bar = tqdm(jobs, desc="experiment", disable=progress_disabled())
    for seed, name in bar:
        bar.set_postfix_str(f"seed {seed} {name}")
        model = ctx.fit(ctx.make(name, seed), name, seed)
        fitted[(name, seed)] = model
        for protocol in cfg.protocols:
            task = ctx.task(protocol, seed)
            res = evaluate(model, task, cfg.ks, seed=seed, head_frac=cfg.long_tail_head)
            ctx.timings[f"eval_{name}_{protocol}_s"].append(res.pop("seconds"))
            tables[protocol].setdefault(DISPLAY[name], []).append({"seed": seed, **res})
            note = model.note()
            if note:
                notes[protocol][DISPLAY[name]] = note
    ablations = run_ablations(ctx, fitted) if cfg.ablations is not None else {}
    ctx.timings["total_s"].append(time.perf_counter() - t_start)
    results: dict[str, Any] = {
        "experiment": cfg.name,
        "dataset": {
            "name": ds.name,
            "n_users": ds.n_users,
            "n_items": ds.n_items,
            "n_interactions": len(ds.interactions),
            "splits": split_counts(ds),
            "split_config": cfg.data.split.model_dump(),
        },
        "seeds": cfg.seeds,
        "ks": cfg.ks,
        "protocols": {
            p: {
                "n_test_users": int(ctx.task(p, cfg.seeds[0]).users.size),
                "n_candidates": int(ctx.task(p, cfg.seeds[0]).candidates.size),
                "summary": {m: summarise(runs) for m, runs in tables[p].items()},
                "runs": tables[p],
                "notes": notes[p],
            }
            for p in cfg.protocols
        },
        "ablations": ablations,
        "timings": {k: v for k, v in ctx.timings.items()},
    }
    (root / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))
    write_report(root, results, cfg)
    log.info("report written to %s (%.0fs)", root, time.perf_counter() - t_start)
    return root
