"""The experiment runner writes a complete, self-consistent report folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ralm.errors import ConfigError
from ralm.evaluation.config import ExperimentConfig, load_experiment_config
from ralm.evaluation.experiment import run_experiment, summarise

TINY = {
    "name": "toy",
    "seeds": [0, 1],
    "ks": [1, 5],
    "data": {"source": "toy"},
    "models": ["random", "popularity", "yahoo", "ralm"],
    "user": {"dim": 8, "mlp_hidden": [16]},
    "user_train": {"epochs": 2, "patience": 0},
    "lookalike": {"h": 8, "k": 4},
    "lookalike_train": {"epochs": 1, "patience": 0},
    "ablations": {
        "k": [2, 4],
        "attention": ["both", "local"],
        "alpha_beta": [[0.3, 0.7], [0.5, 0.5]],
        "retrain": False,
    },
}


def test_summarise_mean_and_sample_std():
    s = summarise([{"seed": 0, "auc": 0.5}, {"seed": 1, "auc": 0.7}, {"seed": 2, "auc": 0.9}])
    assert s["auc"]["mean"] == pytest.approx(0.7)
    assert s["auc"]["std"] == pytest.approx(0.2)  # ddof = 1
    assert "seed" not in s
    assert summarise([{"auc": 0.5}])["auc"]["std"] == 0.0


@pytest.mark.slow  # trains stage 1 + stage 2 a few times on the toy set
def test_run_experiment_writes_report(tmp_path):
    cfg = ExperimentConfig.model_validate(TINY)
    root = run_experiment(cfg, out_dir=tmp_path / "rep")
    for name in (
        "report.md",
        "results.json",
        "config.json",
        "k_ablation.png",
        "merge_ablation.png",
    ):
        assert (root / name).is_file() and (root / name).stat().st_size > 0, name
    res = json.loads((root / "results.json").read_text())
    assert set(res["protocols"]) == {"warm", "cold", "mixed", "mixed_warm", "full"}
    assert set(res["diagnostics"]) == {"copy"}
    warm = res["protocols"]["warm"]
    assert set(warm["summary"]) == {"Random", "Popularity", "Yahoo look-alike", "RALM"}
    runs = warm["runs"]["RALM"]
    assert [r["seed"] for r in runs] == [0, 1]
    assert warm["summary"]["RALM"]["prec@5"]["mean"] == pytest.approx(
        np.mean([r["prec@5"] for r in runs])
    )
    assert [e["k"] for e in res["ablations"]["k"]] == [2, 4]
    assert {e["label"] for e in res["ablations"]["merge"]} == {
        "attention: tower (dot)", "attention: RALM", "concat: tower (dot)", "concat: RALM",
        "attention_concat: tower (dot)", "attention_concat: RALM",
    }  # fmt: skip
    assert res["timings"]["total_s"][0] > 0
    report = (root / "report.md").read_text()
    assert "## Protocol: warm" in report and "## Protocol: cold" in report
    assert "| RALM |" in report and "±" in report
    assert json.loads((root / "config.json").read_text())["seeds"] == [0, 1]


def test_config_errors_name_file_and_field(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nseeds = [0]\nmodels = ["nope"]\n')
    with pytest.raises(ConfigError, match=r"bad\.toml.*models"):
        load_experiment_config(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_experiment_config(broken)
    with pytest.raises(ConfigError, match="not found"):
        load_experiment_config(tmp_path / "missing.toml")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[user]\nepochz = 3\n")
    with pytest.raises(ConfigError, match=r"user\.epochz"):
        load_experiment_config(unknown)


@pytest.mark.parametrize("name", ["quick", "full"])
def test_presets_are_valid(name):
    from pathlib import Path

    path = (
        Path(__file__).resolve().parents[2] / "src/ralm/configs" / f"experiment-ml100k-{name}.toml"
    )
    cfg = load_experiment_config(path)
    assert len(cfg.seeds) >= 3 and cfg.protocols[:2] == ["warm", "cold"]
    assert {"mixed", "full", "copy"} <= set(cfg.protocols)
    assert {"item_knn", "user_knn", "ease"} <= set(cfg.models)
    assert cfg.ablations is not None and 20 in cfg.ablations.k


def test_paper_ordering_lines():
    from ralm.evaluation.report import markdown_table, paper_ordering

    def stat(mean: float, std: float) -> dict[str, dict[str, float]]:
        return {"auc": {"mean": mean, "std": std, "values": [mean, mean]}}

    summary = {"LR": stat(0.7, 0.01), "Yahoo look-alike": stat(0.6, 0.01), "RALM": stat(0.8, 0.0)}
    summary["RALM-average"] = stat(0.795, 0.01)
    lines = paper_ordering(summary, "auc")
    assert lines[0].startswith("- LR < Yahoo look-alike on auc: does NOT hold")
    assert "holds (within noise)" in lines[1]  # RALM-average < RALM by less than one std
    assert len(lines) == 2  # no YouTube DNN: that claim is skipped
    flagged = paper_ordering(summary, "auc", {"LR": "LR cannot embed ..."})
    assert "[LR: fallback scores]" in flagged[0]
    table = markdown_table(summary, ["auc", "gauc"], "model")
    assert "| LR | 0.7000 ± 0.0100 | – |" in table


def test_fixed_seeds_reproduce_every_number(tmp_path):
    raw = {**TINY, "models": ["random", "popularity", "lr", "yahoo"], "ablations": None}
    raw["lr"] = {"epochs": 2}
    cfg = ExperimentConfig.model_validate(raw)
    a, b = (
        json.loads((run_experiment(cfg, out_dir=tmp_path / n) / "results.json").read_text())
        for n in ("a", "b")
    )
    for proto in ("warm", "cold"):
        assert a["protocols"][proto]["runs"] == b["protocols"][proto]["runs"]


def test_references_and_new_protocols_in_the_report(tmp_path):
    """The classic references, the mixed / full protocols and the copy test, end to end."""
    raw = {
        **TINY,
        "models": ["random", "popularity", "item_knn", "user_knn", "ease", "yahoo"],
        "protocols": ["warm", "cold", "mixed", "full", "copy"],
        "ablations": None,
    }
    root = run_experiment(ExperimentConfig.model_validate(raw), out_dir=tmp_path / "rep")
    res = json.loads((root / "results.json").read_text())
    assert set(res["protocols"]) == {"warm", "cold", "mixed", "full"}
    mixed = res["protocols"]["mixed"]["summary"]
    assert mixed["Popularity"]["recall@5"]["mean"] == 0.0  # cold items lose on raw counts
    assert mixed["item-kNN"]["cold_share@5"]["mean"] > 0.0
    full = res["protocols"]["full"]
    assert full["n_candidates"] == res["dataset"]["n_items"]
    assert {"recall@20", "ndcg@20", "recall@50", "ndcg@50"} <= set(full["summary"]["EASE"])
    copy = res["diagnostics"]["copy"]["summary"]
    assert "copy_rank" in copy["user-kNN look-alike"] and "copy_rank" not in copy["Random"]
    assert "EASE" in res["protocols"]["cold"]["notes"]  # re-solved with the cold seeds
    report = (root / "report.md").read_text()
    for head in ("## Protocol: mixed", "## Protocol: full", "## Diagnostic: the copy test"):
        assert head in report
    assert "| item-kNN |" in report and "cold_share@5" in report and "recall@20" in report


@pytest.mark.parametrize("merge", ["attention", "concat"])
def test_ralm_and_its_tower_use_the_configured_stage1_merge(toy, merge):
    """``[user] merge`` decides RALM's stage 1 (it used to be attention whatever the config)."""
    from ralm.evaluation.runner import RunContext

    cfg = ExperimentConfig.model_validate({**TINY, "user": {"merge": merge}})
    ctx = RunContext(cfg, toy)
    sentinel = object()  # a tower already trained for (merge, seed 0): nothing is retrained
    ctx.towers[(merge, 0)] = sentinel  # type: ignore[assignment]
    for name in ("ralm", "ralm_average", "ralm_paper"):
        model = ctx.make(name, 0)
        assert model.user_model is sentinel  # type: ignore[attr-defined]
        # the paper's score exactly: no audience prior and no per-user baseline
        assert model.train_cfg.user_offset == (name != "ralm_paper")  # type: ignore[attr-defined]
    assert ctx.make("ralm_tower", 0).model is sentinel  # type: ignore[attr-defined]


@pytest.mark.slow  # two tiny experiments, stage 1 + stage 2 each
def test_merge_ablation_rows_use_the_tower_they_name(tmp_path):
    """The merge ablation's "<merge>: RALM" rows are RALM on that merge's tower, whatever
    the configured stage-1 merge: the concat-configured run's "attention: RALM" row equals
    the attention-configured run's main RALM (same seed, deterministic), and vice versa."""
    base = {
        **TINY,
        "seeds": [0],
        "protocols": ["warm"],
        "models": ["ralm"],
        "ablations": {
            "seeds": [0],
            "k": [4],
            "attention": ["both"],
            "alpha_beta": [[0.3, 0.7]],
            "retrain": False,
        },
    }
    res = {}
    for merge in ("attention", "concat"):
        cfg = ExperimentConfig.model_validate({**base, "user": {**TINY["user"], "merge": merge}})
        root = run_experiment(cfg, out_dir=tmp_path / merge)
        res[merge] = json.loads((root / "results.json").read_text())
    for configured, other in (("attention", "concat"), ("concat", "attention")):
        rows = {e["label"]: e["runs"][0] for e in res[configured]["ablations"]["merge"]}
        main = res[configured]["protocols"]["warm"]["runs"]["RALM"][0]
        other_main = res[other]["protocols"]["warm"]["runs"]["RALM"][0]
        assert rows[f"{configured}: RALM"]["prec@5"] == pytest.approx(main["prec@5"])
        assert rows[f"{configured}: RALM"]["auc"] == pytest.approx(main["auc"])
        assert rows[f"{other}: RALM"]["prec@5"] == pytest.approx(other_main["prec@5"])
        assert rows[f"{other}: RALM"]["auc"] == pytest.approx(other_main["auc"])
    a, c = (res[m]["protocols"]["warm"]["runs"]["RALM"][0] for m in ("attention", "concat"))
    assert (a["auc"], a["prec@5"]) != (c["auc"], c["prec@5"])  # the two towers differ


def test_attention_ablation_keeps_the_look_alike_weight(tmp_path):
    """Switched at evaluation time, a single attention term takes both weights: the "local"
    row equals the alpha/beta row (0, alpha + beta) and "global" the row (alpha + beta, 0),
    so the ablation compares terms, not a re-weighted audience prior (it used to keep
    beta = 0.7 for "local" and alpha = 0.3 for "global")."""
    cfg = ExperimentConfig.model_validate(
        {
            **TINY,
            "seeds": [0],
            "protocols": ["warm"],
            "models": ["ralm"],
            "ablations": {
                "seeds": [0],
                "k": [4],
                "merge": False,
                "attention": ["both", "local", "global"],
                "alpha_beta": [[0.3, 0.7], [0.0, 1.0], [1.0, 0.0]],
                "retrain": False,
            },
        }
    )
    res = json.loads((run_experiment(cfg, out_dir=tmp_path / "r") / "results.json").read_text())
    att = {e["label"]: e["runs"][0] for e in res["ablations"]["attention"]}
    ab = {e["label"]: e["runs"][0] for e in res["ablations"]["alpha_beta"]}
    for term, label in (("local", "alpha=0.0, beta=1.0"), ("global", "alpha=1.0, beta=0.0")):
        for metric in ("prec@5", "auc", "ndcg@5"):
            assert att[term][metric] == pytest.approx(ab[label][metric], abs=1e-12), (term, metric)
    assert (att["local"]["auc"], att["local"]["prec@5"]) != (
        att["global"]["auc"], att["global"]["prec@5"]
    )  # fmt: skip
