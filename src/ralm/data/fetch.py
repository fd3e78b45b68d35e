"""``ralm data fetch movielens-100k``: obtain ML-100K into a user cache dir, never the repo.

Default source: the ``recbole==1.2.1`` wheel on PyPI, which ships ML-100K in RecBole atomic
format under ``recbole/dataset_example/ml-100k/``. The wheel is downloaded with
``python -m pip download --no-deps`` (so the usual pip configuration, proxies and indexes
apply), the folder is extracted with :mod:`zipfile` and every file is checked against the
SHA-256 constants below. Alternatively a local GroupLens ``ml-100k`` folder (``u.data``,
``u.user``, ``u.item``) is validated and copied.

The cache folder holds a ``SOURCE.json`` manifest (format, origin, checksums); a second
call only re-verifies the checksums (milliseconds).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from platformdirs import user_cache_dir

from ralm.errors import DataError

log = logging.getLogger(__name__)

RECBOLE_PIN = "recbole==1.2.1"
WHEEL_PREFIX = "recbole/dataset_example/ml-100k/"
# sha256 of the files of recbole-1.2.1-py3-none-any.whl:recbole/dataset_example/ml-100k/
ML100K_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.kg": "200a0636fa07c218119a42e5bac7aa3e26e3665a6f919c1b22909bd412b14779",
    "ml-100k.link": "524dca2c3d62619688ab99b3ec53ea2acb9b64d38eafec3e02bdd0dc6bb7d948",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}
GROUPLENS_FILES = ("u.data", "u.user", "u.item", "u.genre", "u.occupation", "README")
MANIFEST = "SOURCE.json"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Cache folder: ``cache_dir``, else ``$RALM_CACHE_DIR``, else the platform user cache."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("RALM_CACHE_DIR")
    return Path(env) if env else Path(user_cache_dir("ralm"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verified(folder: Path, expected: dict[str, str] | None = None) -> dict | None:
    """The manifest of ``folder`` if every file still matches its checksum, else None."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    sums = manifest.get("sha256", {})
    if expected is not None and sums != expected:
        return None
    for name, digest in sums.items():
        p = folder / name
        if not p.is_file() or sha256_file(p) != digest:
            log.warning("%s: checksum mismatch, fetching again", p)
            return None
    return manifest


def _publish(tmp: Path, dest: Path, manifest: dict) -> None:
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def extract_ml100k_from_wheel(
    wheel: Path, dest: Path, expected: dict[str, str] | None = None
) -> Path:
    """Extract ``recbole/dataset_example/ml-100k/*`` from a wheel and verify the checksums.

    Args:
        wheel: the recbole wheel (a zip file).
        dest: target folder (replaced atomically).
        expected: file name -> sha256 (default :data:`ML100K_SHA256`).

    Raises:
        DataError: not a zip, files missing, or a checksum mismatch.
    """
    expected = ML100K_SHA256 if expected is None else expected
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".ml100k-", dir=dest.parent))
    try:
        try:
            zf = zipfile.ZipFile(wheel)
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(f"{wheel}: not a readable wheel/zip file: {e}") from e
        with zf:
            members = [m for m in zf.namelist() if m.startswith(WHEEL_PREFIX) and m != WHEEL_PREFIX]
            names = {
                m[len(WHEEL_PREFIX) :]: m for m in members if "/" not in m[len(WHEEL_PREFIX) :]
            }
            missing = sorted(set(expected) - set(names))
            if missing:
                raise DataError(f"{wheel}: {WHEEL_PREFIX} lacks {missing}")
            for name in sorted(expected):
                (tmp / name).write_bytes(zf.read(names[name]))
        for name, digest in expected.items():
            got = sha256_file(tmp / name)
            if got != digest:
                raise DataError(
                    f"{wheel}: {WHEEL_PREFIX}{name} has sha256 {got}, expected {digest}"
                )
        _publish(tmp, dest, {"format": "recbole", "origin": str(wheel.name), "sha256": expected})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("extracted ML-100K (%d files) to %s", len(expected), dest)
    return dest


def download_recbole_wheel(tmp: Path) -> Path:
    """``python -m pip download --no-deps recbole==1.2.1`` into ``tmp``; returns the wheel."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":none:"]
    cmd += [RECBOLE_PIN, "-d", str(tmp), "--quiet"]
    log.info("downloading %s from the package index", RECBOLE_PIN)
    res = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(tmp.glob("recbole-*.whl"))
    if res.returncode != 0 or not wheels:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise DataError(
            f"could not download {RECBOLE_PIN} with pip ({' / '.join(tail)}); "
            "pass --from-dir with a GroupLens ml-100k folder or --wheel with a local wheel"
        )
    return wheels[0]


def copy_grouplens_ml100k(src: Path, dest: Path) -> Path:
    """Validate a GroupLens ``ml-100k`` folder (it must parse) and copy it to ``dest``."""
    from ralm.data.readers import read_ml100k  # local import: readers import heavy modules

    if not src.is_dir():
        raise DataError(f"--from-dir {src} is not a folder")
    read_ml100k(src)  # raises DataError naming file/line when malformed
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".ml100k-", dir=dest.parent))
    try:
        sums = {}
        for name in GROUPLENS_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, tmp / name)
                sums[name] = sha256_file(tmp / name)
        _publish(tmp, dest, {"format": "grouplens", "origin": str(src.resolve()), "sha256": sums})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def fetch_movielens_100k(
    cache_dir: str | Path | None = None,
    from_dir: str | Path | None = None,
    wheel: str | Path | None = None,
    force: bool = False,
) -> tuple[Path, str]:
    """Make ML-100K available in the cache. Returns ``(folder, format)``.

    Args:
        cache_dir: cache root (default ``$RALM_CACHE_DIR`` or the user cache dir).
        from_dir: a local GroupLens ``ml-100k`` folder to use instead of PyPI.
        wheel: a local ``recbole-1.2.1`` wheel to extract instead of downloading.
        force: fetch again even if a verified copy exists.

    ``format`` is ``"recbole"`` (atomic files) or ``"grouplens"`` (``u.data`` ...).
    """
    dest = cache_root(cache_dir) / "movielens-100k"
    if not force and from_dir is None and wheel is None:
        manifest = _verified(dest)
        if manifest is not None:
            log.info("ML-100K already in %s (checksums verified)", dest)
            return dest, str(manifest["format"])
    if from_dir is not None:
        return copy_grouplens_ml100k(Path(from_dir), dest), "grouplens"
    if wheel is not None:
        return extract_ml100k_from_wheel(Path(wheel), dest), "recbole"
    with tempfile.TemporaryDirectory(prefix="ralm-pip-") as tmp:
        whl = download_recbole_wheel(Path(tmp))
        return extract_ml100k_from_wheel(whl, dest), "recbole"


def cached_movielens_100k(cache_dir: str | Path | None = None) -> tuple[Path, str] | None:
    """The verified cached copy ``(folder, format)``, or None if there is none."""
    dest = cache_root(cache_dir) / "movielens-100k"
    manifest = _verified(dest)
    return None if manifest is None else (dest, str(manifest["format"]))
