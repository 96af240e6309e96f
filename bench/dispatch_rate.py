"""Dispatch rate under a backlog, as a fraction of the account's limit, for 1 and 3 replicas.

Starts the simulator and N `exocall serve` replicas on one PostgreSQL, queues a backlog of calls
with one batch, and reads back from the simulator's own log when each `Calls/connect` arrived.
Prints, per replica count: the sustained dispatch rate as a fraction of the limit (goal: at
least 0.95), the busiest window (never above the limit), and whether any number was dialled
twice or any request was refused with 429.

    .venv/bin/python -m bench.dispatch_rate                  # 200 per 60 s, 3 windows each
    .venv/bin/python -m bench.dispatch_rate --limit 50 --window 15   # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench import fresh_database
from tests.support.processes import Deployment

FAKE_ENV = {
    "EXOTEL_ACCOUNT_SID": "bench-account",
    "EXOTEL_API_KEY": "bench-fake-key",
    "EXOTEL_API_TOKEN": "bench-fake-token",
    "CALLBACK_SECRETS": "bench-fake-secret",
    "EXOTEL_CALLER_ID": "08030752400",
}


async def run(
    replicas: int, limit: int, window: float, windows: int, margin: float
) -> dict[str, Any]:
    url = await fresh_database()
    calls = limit * windows
    env = FAKE_ENV | {
        "EXOTEL_RATE_LIMIT": str(limit),
        "EXOTEL_RATE_WINDOW_SECONDS": str(window),
        "EXOTEL_RATE_MARGIN_SECONDS": str(margin),
    }
    with tempfile.TemporaryDirectory() as workdir:
        deployment = Deployment(database_url=url, workdir=Path(workdir), env=env)
        try:
            simulator_url = deployment.start_simulator("--callback-delay", "1")
            apis = [deployment.start_server() for _ in range(replicas)]
            async with httpx.AsyncClient(timeout=120) as http:
                # Numbers ending in 0 complete (the outcome does not matter to the rate).
                batch = [{"from": f"9{n:08d}0", "app_id": "926"} for n in range(calls)]
                for chunk in range(0, calls, 1000):
                    response = await http.post(
                        f"{apis[0]}/calls/batch", json={"calls": batch[chunk : chunk + 1000]}
                    )
                    response.raise_for_status()
                await _wait_for_empty_queue(http, apis[0], deadline=window * (windows + 3) + 60)
                log = (await http.get(f"{simulator_url}/_simulator/log")).json()
        finally:
            deployment.stop()
    connect_log = [e for e in log if e["path"].endswith("/Calls/connect.json")]
    connects = sorted(e["at"] for e in connect_log)
    # A full backlog drains in bursts: `limit` at once, then each slot again once it leaves
    # the window. Counting from the end of the first burst to the last request measures the
    # sustained rate whether requests come in bursts or evenly.
    sustained = (len(connects) - limit) / (connects[-1] - connects[limit - 1])
    return {
        "replicas": replicas,
        "calls": calls,
        "fraction_of_limit": sustained / (limit / window),
        "busiest_window": busiest_window(connects, window),
        "dialled_twice": sum(
            n > 1 for n in Counter(e["from_number"] for e in connect_log).values()
        ),
        "refused_429": sum(1 for e in log if e["status"] == 429),
    }


def busiest_window(times: list[float], window: float) -> int:
    return max(sum(1 for t in times[i:] if t < start + window) for i, start in enumerate(times))


async def _wait_for_empty_queue(http: httpx.AsyncClient, api: str, deadline: float) -> None:
    stop = time.monotonic() + deadline
    while time.monotonic() < stop:
        page = (await http.get(f"{api}/calls", params={"status": "queued", "limit": 1})).json()
        if not page["items"]:
            return
        await asyncio.sleep(1)
    raise TimeoutError("the queue did not drain")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--windows", type=int, default=3, help="backlog, in windows' worth")
    parser.add_argument("--margin", type=float, default=1.0, help="EXOTEL_RATE_MARGIN_SECONDS")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 3])
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {platform.system()}, "
        f"python {platform.python_version()}; limit {args.limit} per {args.window:g} s, "
        f"rate margin {args.margin:g} s, backlog {args.windows} windows"
    )
    for replicas in args.replicas:
        result = await run(replicas, args.limit, args.window, args.windows, args.margin)
        print(
            f"replicas={result['replicas']} calls={result['calls']} "
            f"rate={result['fraction_of_limit']:.3f} of the limit, "
            f"busiest {args.window:g} s window={result['busiest_window']} (limit {args.limit}), "
            f"dialled twice={result['dialled_twice']}, 429s={result['refused_429']}"
        )


if __name__ == "__main__":
    asyncio.run(main())
