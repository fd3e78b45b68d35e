"""Without redis-server the Redis tests fail (CI cannot pass without them), unless
RALM_ALLOW_NO_REDIS=1 turns them into skips."""

from __future__ import annotations

from pathlib import Path

import pytest

from .redis_fixture import require_redis


def test_found_on_path() -> None:
    assert require_redis().endswith("redis-server")


def test_missing_redis_server_fails_unless_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to be found here
    monkeypatch.delenv("RALM_ALLOW_NO_REDIS", raising=False)
    with pytest.raises(pytest.fail.Exception, match="redis-server is not on PATH"):
        require_redis()
    monkeypatch.setenv("RALM_ALLOW_NO_REDIS", "0")  # only "1" allows it
    with pytest.raises(pytest.fail.Exception):
        require_redis()
    monkeypatch.setenv("RALM_ALLOW_NO_REDIS", "1")
    with pytest.raises(pytest.skip.Exception, match="redis-server is not on PATH"):
        require_redis()
