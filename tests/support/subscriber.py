"""A webhook subscriber for the tests: it keeps every delivery as received (headers and the raw
body) and answers as it is told. In-process (`Subscriber`) or as a process of its own
(`python -m tests.support.subscriber --port N`), for the end-to-end tests.

    GET  /received            every delivery so far, in the order answered
    GET  /held                how many deliveries it holds unanswered now
    POST /answer {"status", "headers", "delay", "hold"}
                              answer every later delivery so (200 at once by default); with
                              "hold", every delivery waits unanswered until the next /answer
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.eventually import eventually
from tests.support.processes import free_ports

_answered = itertools.count()


def _set_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


@dataclass
class Inbox:
    received: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)  # sent with every answer
    delay: float = 0.0  # seconds before answering
    # Cleared, deliveries are held unanswered until it is set again.
    answering: asyncio.Event = field(default_factory=_set_event)
    in_flight: int = 0
    most_at_once: int = 0  # the most requests it held at one time

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = await request.body()
            self.in_flight += 1
            self.most_at_once = max(self.most_at_once, self.in_flight)
            try:
                await self.answering.wait()
                await asyncio.sleep(self.delay)
            finally:
                self.in_flight -= 1
            self.received.append(
                {
                    "headers": dict(request.headers),
                    "body": body.decode(),
                    "answered": self.status,
                    "order": next(_answered),  # across every inbox of the process
                }
            )
            return Response(f"answered {self.status}", self.status, headers=self.headers)

        async def received(_: Request) -> Response:
            return JSONResponse(self.received)

        async def held(_: Request) -> Response:
            return JSONResponse(self.in_flight)

        async def answer(request: Request) -> Response:
            wanted = await request.json()
            self.status = int(wanted["status"])
            self.headers = dict(wanted.get("headers", {}))
            self.delay = float(wanted.get("delay", 0))
            if wanted.get("hold"):
                self.answering.clear()
            else:
                self.answering.set()
            return JSONResponse({"status": self.status})

        return Starlette(
            routes=[
                Route("/hook", hook, methods=["POST"]),
                Route("/received", received),
                Route("/held", held),
                Route("/answer", answer, methods=["POST"]),
            ]
        )


@contextlib.asynccontextmanager
async def subscriber() -> AsyncIterator[tuple[Inbox, str]]:
    """An inbox served on a loopback port in this event loop, and its hook's URL."""
    inbox = Inbox()
    (port,) = free_ports(1)
    server = uvicorn.Server(
        uvicorn.Config(
            inbox.app(), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
    )
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started or task.done(), what="the subscriber serving")
    if task.done():  # it could not serve: say why
        task.result()
    try:
        yield inbox, f"http://127.0.0.1:{port}/hook"
    finally:
        server.should_exit = True
        await task


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    options = parser.parse_args()
    uvicorn.run(Inbox().app(), host="127.0.0.1", port=options.port, log_level="warning")
