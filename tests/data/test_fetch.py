"""ML-100K fetch: extraction + checksums on a fake wheel (network-free), idempotency."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from test_readers import write_ml100k

from ralm.data import fetch
from ralm.errors import DataError

FILES = {"ml-100k.inter": b"user_id:token\n1\n", "ml-100k.user": b"user_id:token\n1\n"}


def _fake_wheel(path: Path, files: dict[str, bytes] = FILES) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("recbole/__init__.py", "")
        for name, data in files.items():
            zf.writestr(fetch.WHEEL_PREFIX + name, data)
    return path


def _sums(files: dict[str, bytes]) -> dict[str, str]:
    return {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}


def test_extract_verifies_checksums(tmp_path: Path) -> None:
    whl = _fake_wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl")
    dest = fetch.extract_ml100k_from_wheel(whl, tmp_path / "cache" / "ml", _sums(FILES))
    assert (dest / "ml-100k.inter").read_bytes() == FILES["ml-100k.inter"]
    assert fetch._verified(dest) is not None
    (dest / "ml-100k.user").write_bytes(b"tampered")
    assert fetch._verified(dest) is None  # a corrupted cache is detected


def test_checksum_mismatch_leaves_nothing(tmp_path: Path) -> None:
    whl = _fake_wheel(tmp_path / "r.whl", {n: b"fake" for n in fetch.ML100K_SHA256})
    dest = tmp_path / "cache" / "ml"
    with pytest.raises(DataError, match=r"ml-100k.inter has sha256 .* expected 4edb74e2"):
        fetch.extract_ml100k_from_wheel(whl, dest)  # the real constants do not match
    assert not dest.exists()
    assert list((tmp_path / "cache").iterdir()) == []  # temp folder cleaned up


def test_missing_member_and_bad_zip(tmp_path: Path) -> None:
    whl = _fake_wheel(tmp_path / "r.whl", {"ml-100k.inter": b"x"})
    with pytest.raises(DataError, match=r"lacks \['ml-100k.user'\]"):
        fetch.extract_ml100k_from_wheel(whl, tmp_path / "d", _sums(FILES))
    (tmp_path / "bad.whl").write_text("not a zip")
    with pytest.raises(DataError, match="not a readable wheel"):
        fetch.extract_ml100k_from_wheel(tmp_path / "bad.whl", tmp_path / "d")


def test_fetch_is_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch, "ML100K_SHA256", _sums(FILES))
    calls: list[Path] = []

    def fake_download(tmp: Path) -> Path:
        calls.append(tmp)
        return _fake_wheel(tmp / "recbole-1.2.1-py3-none-any.whl")

    monkeypatch.setattr(fetch, "download_recbole_wheel", fake_download)
    monkeypatch.setenv("RALM_CACHE_DIR", str(tmp_path / "env-cache"))
    folder, fmt = fetch.fetch_movielens_100k()
    assert fmt == "recbole" and folder == tmp_path / "env-cache" / "movielens-100k"
    assert fetch.fetch_movielens_100k() == (folder, "recbole")
    assert len(calls) == 1  # second call: verified cache, no download
    fetch.fetch_movielens_100k(force=True)
    assert len(calls) == 2


def test_from_dir_copies_a_grouplens_folder(tmp_path: Path) -> None:
    src = write_ml100k(tmp_path / "ml-100k")
    folder, fmt = fetch.fetch_movielens_100k(tmp_path / "cache", from_dir=src)
    assert fmt == "grouplens" and (folder / "u.data").is_file()
    assert fetch.cached_movielens_100k(tmp_path / "cache") == (folder, "grouplens")
    (src / "u.user").write_text("1|24|M\n")  # malformed: named in the error
    with pytest.raises(DataError, match=r"u.user, line 1: expected 5 columns"):
        fetch.fetch_movielens_100k(tmp_path / "cache2", from_dir=src)


def test_download_failure_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution\n")

    monkeypatch.setattr(fetch.subprocess, "run", no_network)
    with pytest.raises(DataError, match=r"could not download recbole==1.2.1.*--from-dir"):
        fetch.fetch_movielens_100k(tmp_path)


def _index_reachable() -> bool:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "index",
        "versions",
        "recbole",
        "--timeout",
        "5",
        "--retries",
        "0",
    ]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (subprocess.SubprocessError, OSError):
        return False


@pytest.mark.slow
def test_real_download_matches_the_checksums(tmp_path: Path) -> None:
    if not _index_reachable():
        pytest.skip("the package index is not reachable")
    folder, fmt = fetch.fetch_movielens_100k(tmp_path)
    assert fmt == "recbole"
    assert {p.name for p in folder.iterdir()} >= set(fetch.ML100K_SHA256)


def test_prepare_movielens_100k_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ralm.data.prepare import prepare
    from ralm.data.splits import SplitConfig

    files = {
        "ml-100k.inter": b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        b"1\t10\t3\t881250949\n2\t10\t4\t881250950\n2\t20\t1\t881250951\n",
        "ml-100k.user": b"user_id:token\tage:token\tgender:token\toccupation:token\t"
        b"zip_code:token\n1\t24\tM\twriter\t85711\n2\t60\tF\tother\t01002\n",
        "ml-100k.item": b"item_id:token\tmovie_title:token_seq\trelease_year:token\t"
        b"class:token_seq\n10\tA\t1995\tDrama\n20\tB\t1994\tComedy Drama\n",
    }
    monkeypatch.setattr(fetch, "ML100K_SHA256", _sums(files))
    monkeypatch.setattr(
        fetch, "download_recbole_wheel", lambda tmp: _fake_wheel(tmp / "r.whl", files)
    )
    cfg = SplitConfig(valid_frac=0.0, test_frac=0.0, cold_item_frac=0.0)
    ds = prepare("movielens-100k", tmp_path / "enc", cfg, cache_dir=tmp_path / "cache")
    assert (ds.n_users, ds.n_items, len(ds.interactions)) == (2, 2, 3)
    assert ds.vocabs["age"].tolist() == ["18-24", "56+"]
    assert (tmp_path / "cache" / "movielens-100k" / "SOURCE.json").is_file()
