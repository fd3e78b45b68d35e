"""Report writer: Markdown tables, PNG plots (matplotlib, Agg) and the JSON of every number."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter

from ralm.evaluation.config import ExperimentConfig

log = logging.getLogger(__name__)


def headline_metrics(ks: list[int]) -> list[str]:
    """Columns of the main tables: accuracy at every K, AUCs, diversity at the largest K."""
    k_lo, k_hi = min(ks), max(ks)
    cols = [f"prec@{k}" for k in sorted(ks)] + [f"recall@{k_hi}", f"ndcg@{k_lo}", "auc", "gauc"]
    return [*cols, f"coverage@{k_hi}", f"gini@{k_hi}", f"tail@{k_hi}"]


DIAGNOSTICS = ("copy",)  # "protocols" that are diagnostics: reported in their own section


def protocol_metrics(protocol: str, ks: list[int]) -> list[str]:
    """Columns of the table of ``protocol`` (``mixed`` and ``full`` have their own)."""
    if protocol == "copy":
        cols = [f"{w}_{m}" for w in ("orig", "copy") for m in ("rank", "rank_min", "rank_max")]
        return [*cols[:3], "orig_top50", *cols[3:], "copy_top50", "copy_vs_orig"]
    k_lo, k_hi = min(ks), max(ks)
    if protocol in ("mixed", "mixed_warm"):
        rec = [f"recall@{k}" for k in sorted(ks)]
        share = [f"cold_share@{k}" for k in sorted(ks)]
        return [*rec, *share, f"prec@{k_lo}", "auc", f"coverage@{k_hi}"]
    if protocol == "full":
        from ralm.evaluation.protocols import FULL_RANKING_KS

        cols = [f"{m}@{k}" for k in FULL_RANKING_KS for m in ("recall", "ndcg")]
        return [*cols, f"prec@{k_lo}", f"coverage@{FULL_RANKING_KS[-1]}"]
    return headline_metrics(ks)


PROTOCOL_TEXT = {
    "warm": "TEST clicks, seeds = TRAIN, items with TRAIN clicks ranked minus the user's TRAIN "
    "clicks",
    "valid": "VALID clicks, seeds = TRAIN",
    "cold": "COLD_TEST clicks of cold items, seeds = TRAIN + COLD_SEED, cold items only ranked",
    "mixed": "COLD_TEST clicks of cold items, seeds = TRAIN + COLD_SEED, cold items ranked "
    "among EVERY warm item minus the user's TRAIN + COLD_SEED clicks; cold_share@K = share "
    "of top-K slots given to cold items",
    "mixed_warm": "TEST clicks of warm items, ranked with the mixed protocol's seeds and "
    "candidates (cold items compete): what the cold items' share costs the warm ones",
    "full": "the standard full-ranking protocol of GNN / two-tower papers: TEST clicks, seeds "
    "= TRAIN, every item of the catalogue ranked minus every known click of the user (TRAIN "
    "+ VALID), recall@K / NDCG@K at K = 20 and 50",
}


def fmt(stat: dict[str, Any]) -> str:
    """``mean ± std`` with 4 decimals (std omitted for a single run; ranks with 1 decimal)."""
    digits = 1 if abs(stat["mean"]) >= 10 else 4
    if len(stat.get("values", [])) > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def markdown_table(rows: dict[str, dict[str, Any]], metrics: list[str], first: str) -> str:
    """A Markdown table: one row per entry of ``rows`` (label -> summary), one column per metric."""
    head = f"| {first} | " + " | ".join(metrics) + " |"
    sep = "| --- | " + " | ".join("---" for _ in metrics) + " |"
    lines = [head, sep]
    for label, summary in rows.items():
        cells = [fmt(summary[m]) if m in summary else "–" for m in metrics]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


PAPER_ORDER = [("LR", "Yahoo look-alike"), ("Yahoo look-alike", "YouTube DNN"),
               ("RALM-average", "RALM")]  # fmt: skip


def paper_ordering(
    summary: dict[str, dict[str, Any]], metric: str, notes: dict[str, str] | None = None
) -> list[str]:
    """One line per pairwise claim of the paper (a < b) that both models of it were run.

    "holds" needs the means in the paper's order; "within noise" flags gaps smaller than
    the larger of the two standard deviations; models with a caveat in ``notes`` (e.g. a
    cold-item fallback) are flagged.
    """
    lines = []
    for a, b in PAPER_ORDER:
        if a not in summary or b not in summary or metric not in summary[a]:
            continue
        sa, sb = summary[a][metric], summary[b][metric]
        verdict = "holds" if sa["mean"] < sb["mean"] else "does NOT hold"
        if abs(sa["mean"] - sb["mean"]) <= max(sa["std"], sb["std"]):
            verdict += " (within noise)"
        flagged = [m for m in (a, b) if notes and m in notes]
        if flagged:
            verdict += f" [{' and '.join(flagged)}: fallback scores]"
        lines.append(f"- {a} < {b} on {metric}: {verdict} ({sa['mean']:.4f} vs {sb['mean']:.4f})")
    return lines


def _plot_k(entries: list[dict[str, Any]], ks: list[int], path: Path) -> None:
    xs = [e["k"] for e in entries]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for k in sorted(ks):
        m = [e["summary"][f"prec@{k}"] for e in entries]
        ax1.errorbar(
            xs,
            [s["mean"] for s in m],
            yerr=[s["std"] for s in m],
            marker="o",
            capsize=3,
            label=f"prec@{k}",
        )
    a = [e["summary"]["auc"] for e in entries]
    ax2.errorbar(
        xs,
        [s["mean"] for s in a],
        yerr=[s["std"] for s in a],
        marker="o",
        capsize=3,
        color="C3",
        label="AUC",
    )
    for ax, title in ((ax1, "prec@K"), (ax2, "AUC")):
        ax.set_xscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.get_major_formatter().set_useOffset(False)  # type: ignore[attr-defined]
        ax.set_xlabel("k (seed clusters per item)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("RALM: number of clusters k")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_bars(entries: list[dict[str, Any]], metrics: list[str], title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 3.5))
    width = 0.8 / max(len(entries), 1)
    for j, e in enumerate(entries):
        xs = [i + j * width for i in range(len(metrics))]
        ax.bar(
            xs,
            [e["summary"][m]["mean"] for m in metrics],
            width,
            yerr=[e["summary"][m]["std"] for m in metrics],
            capsize=3,
            label=e["label"],
        )
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(metrics))], metrics)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def copy_section(block: dict[str, Any]) -> list[str]:
    """The copy-test diagnostic: a table of median ranks, one row per model."""
    from ralm.evaluation.protocols import COPY_ITEMS

    n = block["n_candidates"]
    return [
        "## Diagnostic: the copy test",
        "",
        f"For the {COPY_ITEMS} items with the most TRAIN clicks, a brand-new "
        "copy is seeded by 40 random TRAIN clickers of the item; the item's TEST clickers "
        f"rank the original among the {n} warm candidates and the copy (scored from its "
        "seeds only, `score_seeded_items`) among them too (the original included); the "
        "user's TRAIN clicks are excluded. Per item: the median rank over its clickers; the "
        "table shows the median over items (min / max over items), the mean share of "
        f"clickers with the item in their top 50, and copy_vs_orig = copy_rank / "
        f"orig_rank. Random ranking ≈ {n / 2:.0f}; the top 10 % is rank ≤ {n / 10:.0f}. "
        "Models without a seeded-item hook show the original only.",
        "",
        markdown_table(block["summary"], protocol_metrics("copy", []), "model"),
        "",
    ]


def write_report(root: Path, results: dict[str, Any], cfg: ExperimentConfig) -> Path:
    """Write ``report.md``, ``results.json`` and the ablation plots into ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    protocols = dict(results["protocols"])
    diagnostics = {p: protocols.pop(p) for p in DIAGNOSTICS if p in protocols}
    results = {**results, "protocols": protocols, "diagnostics": diagnostics}
    metrics = headline_metrics(cfg.ks)
    (root / "results.json").write_text(json.dumps(results, indent=2))
    d = results["dataset"]
    n_seeds = len(results["seeds"])
    out = [
        f"# Experiment `{results['experiment']}`",
        "",
        f"Dataset **{d['name']}**: {d['n_users']} users, {d['n_items']} items, "
        f"{d['n_interactions']} interactions; split `{d['split_config']['method']}` "
        f"(rows per split: {', '.join(f'{k} {v}' for k, v in d['splits'].items())}).",
        f"Seeds: {results['seeds']} — every cell is mean ± sample std over {n_seeds} run(s).",
        "prec@K is eq. 12 of the paper (|R_K ∩ S| / min(K, |S|)); candidates are the items "
        "with seeds minus the user's own clicks in the seed splits; AUC/GAUC over each test "
        f"click and {cfg.auc_negatives} sampled non-clicked candidates; tail@K = share of "
        f"recommended slots outside the top {cfg.long_tail_head:.0%} most seeded candidates.",
        "",
    ]
    for proto, block in results["protocols"].items():
        what = PROTOCOL_TEXT.get(proto, proto)
        out += [
            f"## Protocol: {proto}",
            "",
            f"{block['n_test_users']} test users, {block['n_candidates']} candidates ({what}).",
            "",
            markdown_table(block["summary"], protocol_metrics(proto, cfg.ks), "model"),
            "",
        ]
        out += [f"- {note}" for note in block["notes"].values()]
        out.append("")
        claims = [
            line
            for m in (f"prec@{min(cfg.ks)}", "auc")
            for line in paper_ordering(block["summary"], m, block["notes"])
        ]
        if claims and proto in ("warm", "cold"):
            out += ["Paper's ordering (LR < Yahoo < YouTube DNN, RALM-average < RALM):", ""]
            out += [*claims, ""]
    if "copy" in diagnostics:
        out += copy_section(diagnostics["copy"])
    ab = results.get("ablations") or {}
    if ab:
        out += [f"## Ablations (protocol {ab['protocol']}, seeds {ab['seeds']})", ""]
        titles = {
            "k": "clusters per item k"
            + (
                " (stage 2 retrained per k)"
                if ab["k_retrain"]
                else " (seeds re-clustered with k at "
                "evaluation time; stage 2 trained with the default k)"
            ),
            "merge": "stage-1 merge: attention vs concat (tower scored by dot product, and RALM "
            "trained on top of it)",
            "attention": "attention terms" + ("" if ab["retrain"] else " (switched at evaluation)"),
            "alpha_beta": "score weights alpha / beta"
            + ("" if ab["retrain"] else " (switched at evaluation)"),
        }
        for group, title in titles.items():
            if group not in ab:
                continue
            rows = {e["label"]: e["summary"] for e in ab[group]}
            out += [f"### {title}", "", markdown_table(rows, metrics, group), ""]
        if "k" in ab:
            _plot_k(ab["k"], cfg.ks, root / "k_ablation.png")
            out += ["![k ablation](k_ablation.png)", ""]
        if "merge" in ab:
            bar_metrics = [f"prec@{k}" for k in sorted(cfg.ks)] + ["auc"]
            _plot_bars(
                ab["merge"], bar_metrics, "attention merge vs concat", root / "merge_ablation.png"
            )
            out += ["![merge ablation](merge_ablation.png)", ""]
    t = results["timings"]
    out += [
        "## Timings (seconds)",
        "",
        "| step | runs | mean | total |",
        "| --- | --- | --- | --- |",
    ]
    for key, vals in t.items():
        out.append(f"| {key} | {len(vals)} | {sum(vals) / len(vals):.1f} | {sum(vals):.1f} |")
    out.append("")
    (root / "report.md").write_text("\n".join(out))
    log.info("wrote %s", root / "report.md")
    return root / "report.md"
