"""Why webhooks go out through aiohttp: the CPU one POST takes, httpx beside aiohttp.

A local subscriber (uvicorn, answering 200 at once) takes webhook-sized POSTs, 16 at a time as
WEBHOOK_ENDPOINT_CONCURRENCY allows, from each client in turn, in this one process: the CPU
this process spent per request, and the requests a second. The httpx client is the one the
deliverer had (a stream, its body read); the aiohttp one is what it has now.

    .venv/bin/python -m bench.http_clients
    .venv/bin/python -m bench.http_clients --requests 2000 --concurrency 1
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx

from bench.callback_ingest import serve
from tests.support.processes import free_ports

SUBSCRIBER_APP = textwrap.dedent(
    """
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def hook(request):
        await request.body()
        return Response("ok")

    app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
    """
)
BODY = b'{"type":"call.completed","data":"' + b"x" * 900 + b'"}'  # an event's size
HEADERS = {
    "content-type": "application/json",
    "webhook-id": "evt_bench",
    "webhook-timestamp": "1764547200",
    "webhook-signature": "v1,bench",
}


def cpu_seconds() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


async def measure(
    name: str, post: Callable[[], Awaitable[None]], *, requests: int, concurrency: int
) -> None:
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with slots:
            await post()

    await asyncio.gather(*(one() for _ in range(200)))  # connections open, code warm
    cpu, started = cpu_seconds(), time.monotonic()
    await asyncio.gather(*(one() for _ in range(requests)))
    elapsed = time.monotonic() - started
    print(
        f"{name:8}: {requests / elapsed:6,.0f} requests/s, "
        f"{(cpu_seconds() - cpu) / requests * 1e6:5,.0f} µs of CPU per request"
    )


async def run(url: str, *, requests: int, concurrency: int) -> None:
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(limits=limits, follow_redirects=False) as http:

        async def httpx_post() -> None:
            async with http.stream("POST", url, content=BODY, headers=HEADERS) as response:
                async for _ in response.aiter_raw():
                    pass

        await measure("httpx", httpx_post, requests=requests, concurrency=concurrency)
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def aiohttp_post() -> None:
            async with session.post(
                url, data=BODY, headers=HEADERS, allow_redirects=False
            ) as response:
                await response.content.read(1024)

        await measure("aiohttp", aiohttp_post, requests=requests, concurrency=concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        (work / "subscriber.py").write_text(SUBSCRIBER_APP)
        (port,) = free_ports(1)
        subscriber = serve(
            [
                *(str(bin_dir / "uvicorn"), "subscriber:app", "--log-level", "warning"),
                *("--no-access-log", "--port", str(port)),
            ],
            {"PYTHONPATH": str(work), "PATH": str(bin_dir)},
            port,
            work / "subscriber.log",
            ready_path="/hook",
        )
        try:
            print(f"{args.requests} POSTs of {len(BODY)} bytes, {args.concurrency} at a time")
            asyncio.run(
                run(
                    f"http://127.0.0.1:{port}/hook",
                    requests=args.requests,
                    concurrency=args.concurrency,
                )
            )
        finally:
            subscriber.terminate()
            subscriber.wait()


if __name__ == "__main__":
    main()
