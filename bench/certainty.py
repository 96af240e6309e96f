"""Time to certainty: how soon after a call ends its final state is known when every callback of
it is lost, and what share of the account's budget the look-ups take, under a dispatch backlog.

Starts the simulator and one `exocall serve` on PostgreSQL. Queues calls whose callbacks the
simulator loses (numbers ending in 8), lasting 30 s to 10 min each, then a backlog of ordinary
calls that keeps the dispatcher at the account's limit for the whole run. A lost call's end is
known from the simulator's own log (when its `Calls/connect` arrived, plus the length the
simulator gave it); when exocall knew is the call's `updated_at` as it turned terminal.

Every interval is divided by --scale (4 by default) so that a run takes minutes, not a quarter
of an hour: the reconciler's schedule (RECONCILE_FIRST_LOOKUP_SECONDS, RECONCILE_RECHECK_SECONDS
and RECONCILE_INTERVAL_SECONDS, at their defaults), the calls' lengths and the rate window (200
per 60 s). The figures printed are multiplied back: real seconds.

    .venv/bin/python -m bench.certainty
    .venv/bin/python -m bench.certainty --scale 1      # real time: about 16 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from app.config import default
from app.db.models import Call
from app.db.session import create_engine, create_sessionmaker
from bench import fresh_database
from bench.dispatch_rate import FAKE_ENV
from tests.support.processes import Deployment

LIMIT = 200
WINDOW = 60.0
SHORTEST, LONGEST = 30.0, 600.0  # the lost calls' lengths, seconds
LOST = 100
TERMINAL = {"completed", "busy", "no-answer", "failed", "canceled", "rejected"}


def _default(setting: str) -> float:
    return float(default(setting.upper()))


def length(sid: str, scale: float) -> float:
    """The simulator's length for the call (app/exotel/simulator.py, `callback_spread`)."""
    share = int(hashlib.sha256(sid.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return (SHORTEST + share * (LONGEST - SHORTEST)) / scale


async def run(scale: float) -> dict[str, Any]:
    url = await fresh_database()
    window = WINDOW / scale
    env = FAKE_ENV | {
        "EXOTEL_RATE_LIMIT": str(LIMIT),
        "EXOTEL_RATE_WINDOW_SECONDS": str(window),
        "EXOTEL_RATE_MARGIN_SECONDS": str(1 / scale),
        **{
            name.upper(): str(_default(name) / scale)
            for name in (
                "reconcile_interval_seconds",
                "reconcile_first_lookup_seconds",
                "reconcile_recheck_seconds",
            )
        },
    }
    # The longest call, a recheck and room.
    run_seconds = (LONGEST + _default("reconcile_recheck_seconds") + 120) / scale
    backlog = int(LIMIT * run_seconds / window)
    with tempfile.TemporaryDirectory() as workdir:
        deployment = Deployment(database_url=url, workdir=Path(workdir), env=env)
        try:
            simulator_url = deployment.start_simulator(
                "--callback-delay",
                str(SHORTEST / scale),
                "--callback-spread",
                str((LONGEST - SHORTEST) / scale),
            )
            api = deployment.start_server()
            async with httpx.AsyncClient(base_url=api, timeout=120) as http:
                lost = [{"from": f"9{n:08d}8", "app_id": "926"} for n in range(LOST)]
                ordinary = [{"from": f"8{n:08d}0", "app_id": "926"} for n in range(backlog)]
                ids = await _queue(http, lost)
                await asyncio.sleep(1)  # the lost calls first
                await _queue(http, ordinary)
                started = time.monotonic()
                while time.monotonic() - started < run_seconds * 2:
                    if await _all_terminal(http, ids):
                        break
                    await asyncio.sleep(2)
                queued = (await http.get("/calls", params={"status": "queued"})).json()["items"]
                log = (await http.get(f"{simulator_url}/_simulator/log")).json()
        finally:
            deployment.stop()
    engine = create_engine(url)
    async with create_sessionmaker(engine)() as session:
        calls = list(await session.scalars(select(Call).where(Call.id.in_(ids))))
    await engine.dispose()

    connected = {e["sid"]: e["at"] for e in log if e["path"].endswith("/connect.json")}
    lags = sorted(
        (call.updated_at.timestamp() - (connected[call.sid] + length(call.sid, scale))) * scale
        for call in calls
        if call.status in TERMINAL and call.sid in connected
    )
    lookups = [e["at"] for e in log if e["method"] == "GET"]
    requests = sorted(e["at"] for e in log)
    span = requests[-1] - requests[0]
    return {
        "known": len(lags),
        "lags": lags,
        "backlog_left": bool(queued),  # the backlog lasted the whole run
        "lookups": len(lookups),
        "requests": len(requests),
        "lookup_share_of_budget": len(lookups) / (LIMIT * span / window),
        "busiest_lookup_window": _busiest(sorted(lookups), window),
        "window": window,
    }


async def _queue(http: httpx.AsyncClient, calls: list[dict[str, str]]) -> list[str]:
    ids = []
    for chunk in range(0, len(calls), 1000):
        response = await http.post("/calls/batch", json={"calls": calls[chunk : chunk + 1000]})
        response.raise_for_status()
        ids += [call["id"] for call in response.json()["calls"]]
    return ids


async def _all_terminal(http: httpx.AsyncClient, ids: list[str]) -> bool:
    for call_id in ids:
        if (await http.get(f"/calls/{call_id}")).json()["status"] not in TERMINAL:
            return False
    return True


def _busiest(times: list[float], window: float) -> int:
    return max(
        (sum(1 for t in times[i:] if t < start + window) for i, start in enumerate(times)),
        default=0,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=4.0, help="every interval divided by")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {platform.system()}, python "
        f"{platform.python_version()}; {LOST} calls of 30 s to 10 min, every callback lost, "
        f"behind a backlog at {LIMIT} per {WINDOW:g} s; intervals divided by {args.scale:g}, "
        "figures in real seconds"
    )
    result = await run(args.scale)
    lags = result["lags"]
    print(
        f"known: {result['known']} of {LOST}; after the call's end: "
        f"median {statistics.median(lags):.0f} s, p95 {lags[int(len(lags) * 0.95) - 1]:.0f} s, "
        f"max {lags[-1]:.0f} s"
    )
    print(
        f"look-ups: {result['lookups']} of {result['requests']} requests to Exotel, "
        f"{result['lookup_share_of_budget']:.1%} of the budget over the run; busiest "
        f"{WINDOW:g} s window {result['busiest_lookup_window']} look-ups "
        f"(10% of the limit: {LIMIT // 10}); backlog lasted the run: {result['backlog_left']}"
    )


if __name__ == "__main__":
    asyncio.run(main())
