"""``ralm train user|lookalike`` and ``ralm serve``: defaults -> TOML file -> flags."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ralm.cli import app
from ralm.lookalike.config import LookalikeConfig, LookalikeTrainConfig
from ralm.serve.config import ServeConfig
from ralm.user.config import UserModelConfig, UserTrainConfig

from .conftest import run_main


def _user(paths: dict[str, str], *extra: str) -> list[str]:
    return ["train", "user", "--data", paths["data"], "--out", paths["out"], *extra]


def _lookalike(paths: dict[str, str], *extra: str) -> list[str]:
    return [
        "train", "lookalike", "--data", paths["data"], "--user-model", paths["user"],
        "--out", paths["out"], *extra,
    ]  # fmt: skip


def _serve(paths: dict[str, str], *extra: str) -> list[str]:
    return ["serve", "--run", paths["run"], "--data", paths["data"], *extra]


def test_no_flags_gives_the_model_defaults(capture, paths) -> None:
    got = capture(_user(paths))
    assert (got["user"], got["user_train"]) == (UserModelConfig(), UserTrainConfig())
    got = capture(_lookalike(paths))
    assert got["lookalike"] == LookalikeConfig(m=16)  # m from the (patched) stage-1 model
    assert got["lookalike_train"] == LookalikeTrainConfig()
    cfg = capture(_serve(paths))["serve"]
    assert cfg == ServeConfig(state_dir=Path(paths["run"]) / "serve")


# every flag named in tests/, README.md and docs/ before the config path, and its field
HISTORICAL_USER = [
    (["--epochs", "3"], "user_train", "epochs", 3),
    (["--steps-per-epoch", "7"], "user_train", "steps_per_epoch", 7),
    (["--batch-size", "64"], "user_train", "batch_size", 64),
    (["--lr", "0.01"], "user_train", "lr", 0.01),
    (["--dim", "8"], "user", "dim", 8),
    (["--merge", "concat"], "user", "merge", "concat"),
    (["--exclude-field", "a", "--exclude-field", "b"], "user", "exclude_fields", ["a", "b"]),
    (["--negatives", "5"], "user_train", "n_negatives", 5),
    (["--max-pos-per-user", "9"], "user_train", "max_pos_per_user", 9),
    (["--no-logq"], "user_train", "logq_correction", False),
    (["--weight-decay", "0.5"], "user_train", "weight_decay", 0.5),
    (["--seed", "2"], "user_train", "seed", 2),
    (["--patience", "0"], "user_train", "patience", 0),
    (["--monitor", "loss"], "user_train", "monitor", "loss"),
    (["--threads", "0"], "user_train", "threads", 0),
    (["--epochs", "1", "--epochs", "2"], "user_train", "epochs", 2),  # the last value wins
    # new flags, named after the field
    (["--n-negatives", "6"], "user_train", "n_negatives", 6),
    (["--mlp-hidden", "32", "--mlp-hidden", "16"], "user", "mlp_hidden", [32, 16]),
    (["--no-remove-accidental-hits"], "user_train", "remove_accidental_hits", False),
    (["--sparse-grad"], "user", "sparse_grad", True),
    (["--val-max-users", "10"], "user_train", "val_max_users", 10),
]


@pytest.mark.parametrize(("flags", "section", "field", "value"), HISTORICAL_USER)
def test_train_user_flag_sets_one_field(capture, paths, flags, section, field, value) -> None:
    got = capture(_user(paths, *flags))
    assert getattr(got[section], field) == value
    assert got[section].model_fields_set == {field}  # nothing else moved off its default
    other = {"user": "user_train", "user_train": "user"}[section]
    assert got[other].model_fields_set == set()


HISTORICAL_LOOKALIKE = [
    (["--k", "3"], "lookalike", "k", 3),
    (["--h", "8"], "lookalike", "h", 8),
    (["--variant", "average"], "lookalike", "variant", "average"),
    (["--no-local"], "lookalike", "use_local", False),
    (["--no-global"], "lookalike", "use_global", False),
    (["--no-size-prior"], "lookalike", "size_prior", False),
    (["--no-seed-prior"], "lookalike", "seed_prior", False),
    (["--kmeans-backend", "torch"], "lookalike", "kmeans_backend", "torch"),
    (["--alpha", "0.5"], "lookalike", "alpha", 0.5),
    (["--epochs", "12"], "lookalike_train", "epochs", 12),
    (["--batch-size", "32"], "lookalike_train", "batch_size", 32),
    (["--lr", "0.002"], "lookalike_train", "lr", 0.002),
    (["--neg-ratio", "2"], "lookalike_train", "neg_ratio", 2),
    (["--neg-sampling", "popularity"], "lookalike_train", "neg_sampling", "popularity"),
    (["--seed", "4"], "lookalike_train", "seed", 4),
    (["--patience", "1"], "lookalike_train", "patience", 1),
    (["--max-val-pos", "0"], "lookalike_train", "max_val_pos", 0),
    (["--threads", "2"], "lookalike_train", "threads", 2),
]


@pytest.mark.parametrize(("flags", "section", "field", "value"), HISTORICAL_LOOKALIKE)
def test_train_lookalike_flag_sets_one_field(capture, paths, flags, section, field, value):
    got = capture(_lookalike(paths, *flags))
    assert getattr(got[section], field) == value
    other = {"lookalike": "lookalike_train", "lookalike_train": "lookalike"}[section]
    assert got[other].model_fields_set <= {"m"}


HISTORICAL_SERVE = [
    (["--recluster-every", "2"], "recluster_every_s", 2.0),
    (["--min-seeds", "5"], "min_seeds", 5),
    (["--no-fast-path"], "fast_path", False),
    (["--fast-path-min-seeds", "1"], "fast_path_min_seeds", 1),
    (["--max-seeds", "100"], "max_seeds_per_item", 100),
    (["--batch-window-ms", "0"], "batch_window_ms", 0.0),
    (["--max-batch", "8"], "max_batch", 8),
    (["--synchronous", "normal"], "synchronous", "NORMAL"),  # case-insensitive as before
    (["--token", "secret"], "token", "secret"),
    (["--threads", "2"], "torch_threads", 2),
    (["--state-dir", "/tmp/st"], "state_dir", Path("/tmp/st")),
    (["--max-n", "50"], "max_n", 50),
]


@pytest.mark.parametrize(("flags", "field", "value"), HISTORICAL_SERVE)
def test_serve_flag_sets_one_field(capture, paths, flags, field, value) -> None:
    cfg = capture(_serve(paths, *flags))["serve"]
    assert getattr(cfg, field) == value
    assert cfg.model_fields_set - {"state_dir"} <= {field}


def test_serve_token_from_environment(capture, paths, monkeypatch) -> None:
    monkeypatch.setenv("RALM_TOKEN", "from-env")
    assert capture(_serve(paths))["serve"].token == "from-env"
    assert capture(_serve(paths, "--token", "flag"))["serve"].token == "flag"


def test_file_then_flags(capture, paths, tmp_path: Path) -> None:
    f = tmp_path / "run.toml"
    f.write_text(
        "[user]\ndim = 16\nexclude_fields = ['history']\n[user_train]\nepochs = 7\n"
        "[lookalike]\nk = 5\n[lookalike_train]\nneg_ratio = 2\n"
        "[serve]\nmin_seeds = 4\nsynchronous = 'normal'\nstate_dir = 'st'\n[listen]\nport = 9001\n"
    )
    got = capture(_user(paths, "--config", str(f), "--epochs", "3", "--dim", "4"))
    assert (got["user"].dim, got["user"].exclude_fields) == (4, ["history"])  # flag wins
    assert got["user_train"].epochs == 3
    assert got["user"].model_fields_set == {"dim", "exclude_fields"}
    got = capture(_lookalike(paths, "--config", str(f), "--k", "4"))
    assert (got["lookalike"].k, got["lookalike_train"].neg_ratio) == (4, 2)
    cfg = capture(_serve(paths, "--config", str(f)))["serve"]
    assert (cfg.min_seeds, cfg.synchronous, cfg.state_dir) == (4, "NORMAL", Path("st"))


def test_lookalike_m_comes_from_stage1(capture, paths, tmp_path: Path, capsys) -> None:
    f = tmp_path / "m.toml"
    f.write_text("[lookalike]\nm = 16\n")  # matches the patched stage-1 dimension
    assert capture(_lookalike(paths, "--config", str(f)))["lookalike"].m == 16
    assert "--m " not in CliRunner().invoke(app, ["train", "lookalike", "--help"]).output


def test_lookalike_m_mismatch_is_an_error(tmp_path: Path) -> None:
    from ralm.cli.train_lookalike import with_stage1_dim
    from ralm.errors import ConfigError

    assert with_stage1_dim(LookalikeConfig(), 8, tmp_path).m == 8
    with pytest.raises(ConfigError, match=r"\[lookalike\] m = 32 .* 8 dimensions"):
        with_stage1_dim(LookalikeConfig(m=32), 8, tmp_path)


# ----------------------------------------------------------------------------- errors


def _one_line_error(argv: list[str], capsys) -> str:
    code, _, err = run_main(argv, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_bad_flag_value_is_one_line(paths, capsys) -> None:
    line = _one_line_error(_serve(paths, "--synchronous", "WHATEVER"), capsys)
    assert "--synchronous" in line and "WHATEVER" in line
    line = _one_line_error(_user(paths, "--epochs", "abc"), capsys)
    assert "--epochs" in line and "integer" in line
    line = _one_line_error(_user(paths, "--merge", "sum"), capsys)
    assert "--merge" in line and "'attention', 'concat' or 'attention_concat'" in line
    line = _one_line_error(_lookalike(paths, "--no-local", "--no-global"), capsys)
    assert "[lookalike]" in line and "--local" in line and "use_global" in line


def test_bad_file_is_one_line_naming_file_and_key(paths, tmp_path: Path, capsys) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[user_train]\nepochz = 3\n")
    line = _one_line_error(_user(paths, "--config", str(f)), capsys)
    assert f"{f}: [user_train] epochz: unknown key" in line and "'epochs'" in line
    f.write_text("[user]\nepochs = 3\n")  # a training setting in the model's table
    line = _one_line_error(_user(paths, "--config", str(f)), capsys)
    assert f"{f}: [user] epochs: unknown key" in line
    f.write_text("[serve]\nsynchronous = 'WHATEVER'\n")
    line = _one_line_error(_serve(paths, "--config", str(f)), capsys)
    assert f"{f}: [serve] synchronous:" in line and "WHATEVER" in line
    f.write_text("[serve]\nmin_seeds = 'WHATEVER'\n")
    line = _one_line_error(_serve(paths, "--config", str(f), "--synchronous", "normal"), capsys)
    assert f"{f}: [serve] min_seeds:" in line
    f.write_text("[trian]\nepochs = 3\n")
    line = _one_line_error(_user(paths, "--config", str(f)), capsys)
    assert f"{f}: unknown table [trian]" in line
    f.write_text("epochs = 3\n")
    line = _one_line_error(_user(paths, "--config", str(f)), capsys)
    assert "unknown table [epochs]" in line
    f.write_text("[user\n")
    assert "invalid TOML" in _one_line_error(_user(paths, "--config", str(f)), capsys)
    missing = tmp_path / "missing.toml"
    assert "not found" in _one_line_error(_user(paths, "--config", str(missing)), capsys)


def test_a_file_can_hold_every_command(capture, paths, tmp_path: Path) -> None:
    """Tables of the other commands are allowed (one file configures the pipeline)."""
    f = tmp_path / "pipeline.toml"
    f.write_text("[user]\ndim = 8\n[serve]\nmin_seeds = 3\n")
    assert capture(_lookalike(paths, "--config", str(f)))["lookalike"] == LookalikeConfig(m=16)


# ----------------------------------------------------------------------------- help


def _help(argv: list[str]) -> str:
    res = CliRunner().invoke(app, [*argv, "--help"], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    return " ".join(res.output.split())  # rich wraps and pads: compare on single spaces


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "user"], ["--dim", "[default: 128]", "--negatives", "[default: 10]"]),
        (
            ["train", "user"],
            ["--lr", "[default: 0.001]", "--merge", "[attention|concat|attention_concat]"],
        ),
        (["train", "lookalike"], ["--k", "[default: 20]", "--h", "[default: 128]"]),
        (["train", "lookalike"], ["--no-seed-prior", "[default: true]"]),
        (["serve"], ["--recluster-every", "[default: 300.0]", "[default: 3000000]"]),
        (["serve"], ["--state-dir", "[default: RUN/serve]", "RALM_TOKEN", "--config"]),
    ],
)
def test_help_shows_defaults(argv, expected) -> None:
    text = _help(argv)
    for piece in expected:
        assert piece in text, piece


def test_every_field_has_a_flag_with_its_default() -> None:
    """Fields added to a model (e.g. new request limits) get a flag without CLI edits."""
    from ralm.cli.config import Command, command_sections
    from ralm.config_files import field_default, format_value, scalar_kind

    helps = {
        "user": _help(["train", "user"]),
        "lookalike": _help(["train", "lookalike"]),
        "serve": _help(["serve"]),
    }
    for command, text in helps.items():
        for section in command_sections(Command(command)):
            for name, info in section.model.model_fields.items():
                if name in section.skip or scalar_kind(info.annotation) is None:
                    continue
                assert "--" + name.replace("_", "-") in text, (command, name)
                if name not in section.computed:
                    shown = f"[default: {format_value(field_default(info))}]"
                    assert shown in text, (command, name, shown)


def test_data_prepare_split_flags(monkeypatch, tmp_path: Path) -> None:
    import ralm.data.prepare
    from ralm.data.splits import SplitConfig

    seen: dict[str, SplitConfig] = {}

    def fake(source, out, cfg, cache_dir=None):
        seen["split"] = cfg
        raise RuntimeError("stop")

    monkeypatch.setattr(ralm.data.prepare, "prepare", fake)
    argv = ["data", "prepare", "src.toml", "--out", str(tmp_path), "--split", "global_time"]
    CliRunner().invoke(app, [*argv, "--test-frac", "0.2", "--cold-min-clicks", "4"])
    assert seen["split"] == SplitConfig(method="global_time", test_frac=0.2, cold_min_clicks=4)
    CliRunner().invoke(app, ["data", "prepare", "src.toml", "--out", str(tmp_path)])
    assert seen["split"] == SplitConfig()


def test_evaluate_list_flags_default_to_the_config(monkeypatch, tmp_path: Path, capsys) -> None:
    """`ralm evaluate --config F` uses F's models/seeds unless a flag is given."""
    import ralm.evaluation.experiment

    seen = {}

    def fake(cfg, out_dir=None):
        seen["cfg"] = cfg
        raise RuntimeError("stop")

    monkeypatch.setattr(ralm.evaluation.experiment, "run_experiment", fake)
    data = tmp_path / "enc"
    data.mkdir()
    (data / "meta.json").write_text("{}")
    f = tmp_path / "exp.toml"
    f.write_text("models = ['popularity', 'lr']\nseeds = [4]\n")
    base = ["evaluate", "--data", str(data), "--out", str(tmp_path / "rep")]
    CliRunner().invoke(app, [*base, "--config", str(f), "--ks", "5"])
    cfg = seen["cfg"]
    from ralm.evaluation.config import ExperimentConfig

    assert (cfg.models, cfg.seeds, cfg.ks) == (["popularity", "lr"], [4], [5])
    assert cfg.protocols == ExperimentConfig().protocols  # neither in the file nor a flag
    assert cfg.data.encoded == data and cfg.ablations is None
    CliRunner().invoke(app, base)
    assert seen["cfg"].models == ExperimentConfig().models
    line = _one_line_error([*base, "--models", "popularity,foo"], capsys)
    assert "--models" in line and "foo" in line


def test_data_synth_split_flags(monkeypatch, tmp_path: Path) -> None:
    import ralm.data.synth
    from ralm.data.splits import SplitConfig

    seen = {}

    def fake(data, out, split):
        seen["split"] = split
        raise RuntimeError("stop")

    monkeypatch.setattr(ralm.data.synth, "write_encoded", fake)
    argv = ["data", "synth", "--preset", "tiny", "--out", str(tmp_path), "--format", "encoded"]
    CliRunner().invoke(
        app, [*argv, "--seed", "3", "--split", "random_per_user", "--test-frac", "0.2"]
    )
    assert seen["split"] == SplitConfig(method="random_per_user", test_frac=0.2, seed=3)
