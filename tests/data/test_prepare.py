"""prepare() end to end on a generated GroupLens folder: leakage guarantees, CLI, describe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from generic_fixture import write_tiny
from typer.testing import CliRunner

from ralm.cli import app
from ralm.data.describe import describe
from ralm.data.encoded import EncodedDataset, Split
from ralm.data.prepare import prepare
from ralm.data.splits import SplitConfig, SplitMethod
from ralm.errors import ConfigError


def write_random_ml100k(d: Path, seed: int = 0, n_users: int = 40, n_items: int = 50) -> Path:
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    pairs = np.unique(rng.integers(0, n_users, 1500) * n_items + (rng.zipf(1.3, 1500) % n_items))
    u, i = pairs // n_items + 1, pairs % n_items + 1
    ts = rng.integers(880_000_000, 890_000_000, u.size)
    rows = [f"{a}\t{b}\t{rng.integers(1, 6)}\t{t}\n" for a, b, t in zip(u, i, ts, strict=True)]
    (d / "u.data").write_text("".join(rows))
    occ = ["writer", "other", "student"]
    (d / "u.user").write_text(
        "".join(f"{k}|{15 + k}|{'MF'[k % 2]}|{occ[k % 3]}|{10000 + 997 * k}\n"
                for k in range(1, n_users + 1))
    )  # fmt: skip
    flags = lambda j: "|".join("1" if g in (j % 19, (j * 7) % 19) else "0" for g in range(19))  # noqa: E731
    (d / "u.item").write_text(
        "".join(f"{j}|Movie {j}|01-Jan-1995||http://x|{flags(j)}\n" for j in range(1, n_items + 1))
    )
    return d


@pytest.fixture
def ml_dir(tmp_path: Path) -> Path:
    return write_random_ml100k(tmp_path / "ml-100k")


@pytest.mark.parametrize("method", ["per_user", "global_time", "random_per_user"])
def test_history_holds_only_train_clicks(ml_dir: Path, method: SplitMethod) -> None:
    cfg = SplitConfig(method=method, cold_item_frac=0.2, cold_min_clicks=5, seed=1)
    ds = prepare(f"ml100k:{ml_dir}", None, cfg)
    it = ds.interactions
    cold = np.unique(it.item[it.mask(Split.COLD_SEED, Split.COLD_TEST)])
    assert cold.size > 0
    off, val = ds.multivalent["history"]
    g_off, g_val = ds.multivalent["genres"]
    genre_vocab = ds.vocabs["genres"]
    item_genres = {}  # independent reference, straight from the u.item flags
    for line in (ml_dir / "u.item").read_text().splitlines():
        cells = line.split("|")
        item_genres[cells[0]] = {g for g, f in enumerate(cells[5:]) if f == "1"}
    from ralm.data.movielens import ML100K_GENRES

    for u in range(ds.n_users):
        hist = set((val[off[u] : off[u + 1]] - 1).tolist())
        m = it.user == u
        train_items = set(it.item[m & (it.split == Split.TRAIN)].tolist())
        assert hist == train_items  # exactly the TRAIN clicks: no VALID/TEST/COLD click
        assert not hist & set(cold.tolist())
        expect = {ML100K_GENRES[g] for j in train_items for g in item_genres[ds.item_ids[j]]}
        got = {str(genre_vocab[c - 1]) for c in g_val[g_off[u] : g_off[u + 1]]}
        assert got == expect


def test_prepare_writes_and_reloads(ml_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "enc"
    ds = prepare(f"ml100k:{ml_dir}", out, SplitConfig(seed=3))
    back = EncodedDataset.load(out)
    assert back.extra["split"]["seed"] == 3 and back.extra["source"].startswith("ml100k:")
    np.testing.assert_array_equal(back.interactions.split, ds.interactions.split)
    d = describe(back)
    assert d["n_users"] == 40 and sum(d["splits"].values()) == d["n_interactions"]
    assert d["n_cold_items"] == back.extra["split"]["n_cold_items"]
    assert {f["name"]: f["kind"] for f in d["fields"]}["history"] == "multivalent"
    prepare(f"ml100k:{ml_dir}", out, SplitConfig(seed=4))  # replaces an older dataset
    assert EncodedDataset.load(out).extra["split"]["seed"] == 4


def test_prepare_refuses_to_overwrite_other_folders(ml_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="refusing"):
        prepare(f"ml100k:{ml_dir}", tmp_path / "mine")


def test_unknown_source() -> None:
    with pytest.raises(ConfigError, match="unknown data source"):
        prepare("kaggle:whatever")
    with pytest.raises(ConfigError, match="is not a folder"):
        prepare("ml1m:/nonexistent/folder")


def test_cli_prepare_and_describe_generic_toml(tmp_path: Path) -> None:
    toml = write_tiny(tmp_path / "src")
    out = tmp_path / "enc"
    runner = CliRunner()
    args = ["data", "prepare", str(toml), "--out", str(out), "--split", "global_time"]
    res = runner.invoke(app, [*args, "--valid-frac", "0", "--cold-item-frac", "0"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["data", "describe", str(out)])
    assert res.exit_code == 0, res.output
    for word in ("users", "tags", "multivalent", "continuous", "cold_seed", "20..40"):
        assert word in res.output
    res = runner.invoke(app, ["data", "describe", str(out), "--json"])
    assert '"n_interactions": 13' in res.output


def test_cli_errors_exit_2_without_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ralm.cli import main

    toml = write_tiny(tmp_path / "src", users="user_id,gender,tags,age\nu1,F,a,x\n")
    for args in (
        ["data", "prepare", str(toml), "--out", str(tmp_path / "o")],
        ["data", "prepare", str(toml), "--out", str(tmp_path / "o"), "--test-frac", "1.5"],
        ["data", "describe", str(tmp_path)],
        ["data", "fetch", "movielens-20m"],
    ):
        monkeypatch.setattr(sys, "argv", ["ralm", *args])
        with pytest.raises(SystemExit) as exc:
            main()
        assert exc.value.code == 2, args
        assert "error:" in capsys.readouterr().err
    # the real console entry point, once
    args = ["data", "prepare", str(toml), "--out", str(tmp_path / "o")]
    res = subprocess.run([sys.executable, "-m", "ralm", *args], capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "users.csv, row 1 (line 2), column 'age': 'x' is not a number" in res.stderr


@pytest.mark.parametrize("cmd", ["fetch", "prepare", "describe"])
def test_data_commands_have_help(cmd: str) -> None:
    res = CliRunner().invoke(app, ["data", cmd, "--help"])
    assert res.exit_code == 0 and "Usage" in res.output


def test_prepare_is_deterministic_for_a_seed(ml_dir: Path) -> None:
    cfg = SplitConfig(method="random_per_user", cold_item_frac=0.2, cold_min_clicks=5, seed=11)
    a = prepare(f"ml100k:{ml_dir}", None, cfg)
    b = prepare(f"ml100k:{ml_dir}", None, cfg)
    for col in ("user", "item", "ts", "split"):
        np.testing.assert_array_equal(getattr(a.interactions, col), getattr(b.interactions, col))
    np.testing.assert_array_equal(a.multivalent["history"][1], b.multivalent["history"][1])
    c = prepare(f"ml100k:{ml_dir}", None, cfg.model_copy(update={"seed": 12}))
    assert not np.array_equal(a.interactions.split, c.interactions.split)
