"""`exocall serve` and `exocall simulator` hold an idle connection open longer than their
clients keep one: a server that closed it first (uvicorn's default is 5 s, httpx keeps one 5 s)
could do so just as a client sends on it, and the request would be reset unread. Told apart from
one that was read by nothing, a `Calls/connect` sent so ends `unknown` and is never dialled."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.support.processes import Deployment

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

# Idle for longer than uvicorn's own default keep-alive and httpx's: the stimulus, not a wait.
IDLE_SECONDS = 6


async def _answers_after_idle(url: str, path: str) -> list[bytes]:
    """The status lines of two requests on one connection, `IDLE_SECONDS` apart (b"" once the
    server has closed it)."""
    where = httpx.URL(url)
    reader, writer = await asyncio.open_connection(where.host, where.port)
    statuses = []
    try:
        for n in range(2):
            if n:
                await asyncio.sleep(IDLE_SECONDS)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {where.host}\r\n\r\n".encode())
            await writer.drain()
            status = await reader.readline()
            statuses.append(status.strip())
            if not status:
                break
            length = 0
            while (header := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = header.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
    finally:
        writer.close()
    return statuses


async def test_an_idle_connection_is_kept_open_longer_than_clients_keep_theirs(
    deployment: Deployment,
) -> None:
    simulator_url = deployment.start_simulator()
    server_url = deployment.start_server()

    answers = await asyncio.gather(
        _answers_after_idle(simulator_url, "/_simulator/log"),
        _answers_after_idle(server_url, "/healthz"),
    )

    assert answers == [[b"HTTP/1.1 200 OK"] * 2] * 2
