"""Passthru latency: how fast `GET /passthru` answers, alone and beside the ingestion load.

Exotel's flow waits on the answer, so what counts is its latency, each request stored before it
is answered. On PostgreSQL, with calls in progress (their app has a 302 rule, so that every
request also looks the call's app up), wrk replays Exotel-shaped Passthru GETs, each for a call
and a `CurrentTime` of its own (no request is a repeat):
1. alone, at the ingestion benchmark's concurrency (32 connections);
2. alone, on a few connections (`--beside`, 4): a load that leaves the machine room;
3. on those few connections while 32 connections replay status callbacks as
   `bench.callback_ingest` does.

    .venv/bin/python -m bench.passthru
    .venv/bin/python -m bench.passthru --duration 10 --beside 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import update

from app.calls.callback_auth import sign
from app.db.models import Call
from app.db.session import create_engine
from bench import fresh_database
from bench.callback_ingest import CONNECTIONS, SECRET, placed_calls, serve, server_env, wrk_script
from tests.support.processes import free_ports

APP_ID = "926"


async def in_flows(url: str, ids: list[uuid.UUID]) -> None:
    """Give the calls the app whose flow has the Passthru applet (and a 302 rule)."""
    engine = create_engine(url)
    async with engine.begin() as db:
        await db.execute(update(Call).where(Call.id.in_(ids)).values(app_id=APP_ID))
    await engine.dispose()


def passthru_script(calls: list[tuple[uuid.UUID, str]], path: Path) -> None:
    """Each request: a call's Passthru GET with the fields Exotel sends (as the simulator
    does), the digits 1 or 2 and a time of its own."""
    sids = ",".join(f'"{sid}"' for _, sid in calls)
    token = sign(SECRET.encode(), None)
    path.write_text(
        textwrap.dedent(
            f"""
            local sids = {{ {sids} }}
            local counter = 0
            local base = 0
            function init(args) base = math.random(1000000) * 100000 end
            function request()
              counter = counter + 1
              local at = base + counter
              local f = math.floor  -- wrk's Lua (5.1) has no `//`
              local time = string.format("2026-12-%02d%%20%02d:%02d:%02d",
                1 + f(at / 86400) % 28, f(at / 3600) % 24, f(at / 60) % 60, at % 60)
              local path = string.format(
                "/passthru?token={token}&CallSid=%s&digits=%%22%d%%22&CurrentTime=%s"
                .. "&From=09052161110&To=08030752400&Direction=outbound-api"
                .. "&CustomField=order-33847&RecordingUrl=",
                sids[counter % #sids + 1], counter % 2 + 1, time)
              return wrk.format("GET", path)
            end
            function done(summary, latency, requests)
              io.write(string.format("p50_us=%d p99_us=%d requests=%d errors=%d\\n",
                latency:percentile(50), latency:percentile(99), summary.requests,
                summary.errors.status + summary.errors.connect + summary.errors.read
                + summary.errors.timeout))
            end
            """
        )
    )


def wrk(port: int, script: Path, connections: int, duration: int) -> dict[str, float]:
    result = subprocess.run(
        [
            *("wrk", "-t1", f"-c{connections}", f"-d{duration}s", "-s", str(script)),
            *("--latency", f"http://127.0.0.1:{port}"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    out = result.stdout
    figures = {
        "rate": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),  # type: ignore[index]
        "p50_ms": int(re.search(r"p50_us=(\d+)", out)[1]) / 1000,  # type: ignore[index]
        "p99_ms": int(re.search(r"p99_us=(\d+)", out)[1]) / 1000,  # type: ignore[index]
    }
    if errors := re.search(r"errors=(\d+)", out):
        figures["errors"] = int(errors[1])  # the Passthru script counts non-2xx/3xx too
    return figures


async def run(duration: int, beside: int) -> None:
    url = await fresh_database()
    calls = await placed_calls(url)
    await in_flows(url, [call_id for call_id, _ in calls])
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        callbacks, passthrus = work / "callbacks.lua", work / "passthru.lua"
        wrk_script(calls, callbacks)
        passthru_script(calls, passthrus)
        env = server_env(url, work, PASSTHRU_REDIRECT_DIGITS=json.dumps({APP_ID: ["2"]}))
        (port,) = free_ports(1)
        argv = [str(bin_dir / "exocall"), "serve", "--no-access-log", "--port", str(port)]
        server = serve(argv, env, port, work / "exocall.log")
        try:
            alone = wrk(port, passthrus, CONNECTIONS, duration)
            light = wrk(port, passthrus, beside, duration)
            with ThreadPoolExecutor(2) as pool:
                ingest = pool.submit(wrk, port, callbacks, CONNECTIONS, duration)
                flows = pool.submit(wrk, port, passthrus, beside, duration)
                loaded, among = ingest.result(), flows.result()
        finally:
            server.terminate()
            server.wait()
    print(
        f"Passthru alone, {CONNECTIONS} connections: {alone['rate']:,.0f}/s, p50 "
        f"{alone['p50_ms']:.1f} ms, p99 {alone['p99_ms']:.1f} ms, non-2xx/3xx {alone['errors']:.0f}"
    )
    print(
        f"Passthru alone, {beside} connections: {light['rate']:,.0f}/s, p50 "
        f"{light['p50_ms']:.1f} ms, p99 {light['p99_ms']:.1f} ms, non-2xx/3xx {light['errors']:.0f}"
    )
    print(
        f"Passthru on {beside} connections beside {CONNECTIONS} of status callbacks: "
        f"{among['rate']:,.0f}/s, p50 {among['p50_ms']:.1f} ms, p99 {among['p99_ms']:.1f} ms, "
        f"non-2xx/3xx {among['errors']:.0f}; the callbacks meanwhile {loaded['rate']:,.0f}/s, "
        f"p50 {loaded['p50_ms']:.1f} ms, p99 {loaded['p99_ms']:.1f} ms"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per run")
    parser.add_argument("--beside", type=int, default=4, help="Passthru connections in run 2")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, python "
        f"{platform.python_version()}; PostgreSQL on the same host; exocall serve, 1 worker"
    )
    await run(args.duration, args.beside)


if __name__ == "__main__":
    asyncio.run(main())
