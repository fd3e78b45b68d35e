"""The HTTP load generator of ``bench_serve.py``, run in its own (spawned) process.

Real clients are other machines: the generator must not share the server's GIL. It sends
``POST /recommend`` either as raw keep-alive HTTP/1.1 over asyncio streams
(:func:`_raw_post`, a few tens of microseconds of client CPU per request) or through async
httpx, and answers each level the benchmark asks for over a pipe.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np


async def _raw_post(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], head: bytes, body: bytes
) -> bytes:
    """One keep-alive HTTP/1.1 POST on ``conn``; the response body (non-200: an error)."""
    reader, writer = conn
    writer.write(head + b"%d\r\n\r\n" % len(body) + body)
    status = await reader.readuntil(b"\r\n")
    length = -1
    while True:
        line = await reader.readuntil(b"\r\n")
        if line == b"\r\n":
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length < 0:
        raise RuntimeError("response without content-length")
    data = await reader.readexactly(length)
    if status.split(b" ", 2)[1] != b"200":
        raise RuntimeError(f"{status.decode().strip()}: {data[:200]!r}")
    return data


def _client_process(url: str, users: int, max_conn: int, conn: Any, lib: str = "raw") -> None:
    """The HTTP load generator, run in its own process (spawned), as real clients are
    other machines: it does not share the server's GIL. ``lib`` "raw": keep-alive HTTP/1.1
    over asyncio streams (a few tens of microseconds of client CPU per request, as a
    wrk-like load generator), "httpx": async httpx (about 4.5 ms of client CPU per
    request, which on a 2-core host is CPU the server does not get). Runs each
    ``(concurrency, requests per client, max seconds, seed)`` it receives and sends back
    ``(latencies, wall seconds, client CPU seconds)``; ``None`` ends it."""
    import orjson

    host, _, port = url.removeprefix("http://").partition(":")
    head = (
        f"POST /recommend HTTP/1.1\r\nhost: {host}:{port}\r\n"
        "content-type: application/json\r\ncontent-length: "
    ).encode()

    async def main() -> None:
        import httpx

        limits = httpx.Limits(max_connections=max_conn)
        pool: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
            while True:
                cmd = conn.recv()
                if cmd is None:
                    break
                conc, per, max_s, seed = cmd
                for _, w in pool:  # fresh connections per level (idle ones time out)
                    w.close()
                if lib == "raw":
                    pool = [await asyncio.open_connection(host, int(port)) for _ in range(conc)]
                stop = time.monotonic() + max_s
                done: list[float] = []

                async def client(
                    i: int,
                    per: int = per,
                    stop: float = stop,
                    done: list = done,
                    seed: int = seed,
                    pool: list = pool,
                ) -> None:
                    r = np.random.default_rng(seed + i)
                    for _ in range(per):
                        if time.monotonic() > stop:
                            return
                        t0 = time.perf_counter()
                        body = {"user_id": f"u{r.integers(users)}", "n": 50}  # as in-process
                        if lib == "raw":
                            orjson.loads(await _raw_post(pool[i], head, orjson.dumps(body)))
                        else:
                            resp = await c.post("/recommend", json=body)
                            resp.raise_for_status()
                        done.append(time.perf_counter() - t0)

                c0, t0 = time.process_time(), time.perf_counter()
                await asyncio.gather(*(client(i) for i in range(conc)))
                conn.send((done, time.perf_counter() - t0, time.process_time() - c0))
        for _, w in pool:
            w.close()

    asyncio.run(main())
