"""Calls on a policy at the account's limit: retries, and a per-number limit, through 1 or 3
replicas.

Starts the simulator and N `exocall serve` replicas on one PostgreSQL, tells the simulator what
the first attempt to some numbers does (`POST /_simulator/outcomes`), and queues --calls calls
with `POST /calls/batch`, each with `retry: {max_attempts: 2 or 3, on: [busy, no-answer],
intervals}`. A third are busy on their first attempt: half of those answer the next, half are
busy every time (their number ends in 2). A twentieth share a few numbers, 20 calls to each,
so that NUMBER_ATTEMPT_LIMIT holds some back. While the calls run, the bench counts, every
--sample seconds, the calls due (queued, or scheduled with `next_attempt_at` passed, and not
being sent) by the database's clock. Once every call is final it prints:

- the account's budget while work was due: in each window of the account's rate (from the first
  request) that calls were due throughout, the requests the simulator received over the limit;
  the lowest, the median and the whole (goal: 0.95 or more);
- the busiest sliding window, as the simulator received the requests and as exocall granted the
  `Calls/connect` (the `dial` table's `sent_at`: `exotel_request` is pruned as the window
  passes): never above the limit; and the 429s the simulator answered (goal: none);
- the seconds each replica's dispatch waited for the budget (exocall_jobs_wait_seconds_total):
  near none means something other than the budget held it back;
- the busiest sliding period for any one number, from the `dial` table (never above
  NUMBER_ATTEMPT_LIMIT);
- the calls' final statuses, the attempts per call, and the wall time.

Time runs --scale times faster than Exotel's (10 by default): the account's window (60 s),
its margin (1 s, unless --margin) and the retry intervals (30 s, then 60 s) are divided by it,
the limit (200) is not; the simulator's own limit is the same, enforced as Exotel does.
--dump writes each run's samples, requests and dials as JSON, to look into.

    .venv/bin/python -m bench.policy --calls 10000 --replicas 1 --margin 0.2
    .venv/bin/python -m bench.policy --calls 10000 --replicas 3 --margin 0.2
    .venv/bin/python -m bench.policy --calls 12 --replicas 1 --number-limit 2/5s  # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import platform
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.calls.policy import NumberLimit
from app.calls.state import TERMINAL
from app.db.models import Call, CallStatus, Dial
from app.db.session import create_engine
from bench import fresh_database
from bench.certainty import _queue
from bench.dispatch_rate import FAKE_ENV
from tests.support.processes import Deployment

LIMIT = 200  # Exotel's: 200 requests a minute per account
WINDOW = 60.0
MARGIN = 1.0  # EXOTEL_RATE_MARGIN_SECONDS' default
INTERVALS = (30, 60)  # the retries' waits, real seconds
CALLS_PER_SHARED_NUMBER = 20
BATCH = 1000


@dataclass(frozen=True)
class Plan:
    """The calls to queue, and what the simulator is told of their numbers' first attempts."""

    calls: list[dict[str, Any]]
    outcomes: dict[str, list[str]]  # number -> outcomes of its first requests
    busy_first: int


def plan(count: int, intervals: Sequence[int]) -> Plan:
    """`count` calls: a twentieth on shared numbers (20 calls to each; the odd ones end in 2,
    busy every time), the rest to a number each. A third of all busy on the first attempt: on
    distinct numbers, every other one of them only then (a planned `busy`, then the last digit:
    0, completed), the others every time (ending in 2). A tenth of the rest no-answer first."""
    shared = count // 20
    pool = max(1, shared // CALLS_PER_SHARED_NUMBER)
    distinct = count - shared
    numbers: list[str] = []
    outcomes: dict[str, list[str]] = {}
    busy_first = 0
    for i in range(shared):
        p = i % pool
        numbers.append(f"+917{p:08d}{2 if p % 2 else 0}")
        busy_first += p % 2
    owed = max(0, count // 3 - busy_first)
    marked = 0
    for j in range(distinct):
        # Spread the busy ones evenly through the queue.
        busy = (j + 1) * owed // distinct > j * owed // distinct
        if busy:
            marked += 1
            number = f"+919{j:08d}{0 if marked % 2 else 2}"
            if marked % 2:
                outcomes[number] = ["busy"]
        else:
            number = f"+918{j:08d}0"
            if j % 10 == 1:
                outcomes[number] = ["no-answer"]
        numbers.append(number)
    busy_first += marked
    calls = [
        {
            "from": number,
            "app_id": "926",
            "retry": {
                "max_attempts": 3 if i % 2 else 2,
                "on": ["busy", "no-answer"],
                "intervals": list(intervals),
            },
        }
        for i, number in enumerate(numbers)
    ]
    return Plan(calls, outcomes, busy_first)


@dataclass
class Samples:
    """(database time, calls due, calls not final), every `pause` seconds."""

    at: list[float] = field(default_factory=list)
    due: list[int] = field(default_factory=list)
    open: list[int] = field(default_factory=list)


async def _watch(engine: AsyncEngine, samples: Samples, *, pause: float, deadline: float) -> None:
    """Sample until no call is left that is not final (and at least one was queued)."""
    now = func.now()
    due = and_(
        Call.claimed_at.is_(None),
        or_(
            and_(
                Call.status == CallStatus.QUEUED,
                or_(Call.next_attempt_at.is_(None), Call.next_attempt_at <= now),
            ),
            and_(Call.status == CallStatus.SCHEDULED, Call.next_attempt_at <= now),
        ),
    )
    not_final = Call.status.not_in([status.value for status in TERMINAL])
    query = select(
        func.extract("epoch", now),
        func.count().filter(due),
        func.count().filter(not_final),
        func.count(),
    )
    stop = time.monotonic() + deadline
    while time.monotonic() < stop:
        async with engine.connect() as connection:
            at, due_now, open_now, total = (await connection.execute(query)).one()
        samples.at.append(float(at))
        samples.due.append(due_now)
        samples.open.append(open_now)
        if total and not open_now:
            return
        await asyncio.sleep(pause)
    raise TimeoutError(f"calls still not final after {deadline:.0f} s")


def due_spans(samples: Samples) -> list[tuple[float, float]]:
    """The stretches in which every sample found a call due."""
    spans: list[tuple[float, float]] = []
    start: float | None = None
    for i, (at, due) in enumerate(zip(samples.at, samples.due, strict=True)):
        if due and start is None:
            start = at
        elif not due and start is not None:
            spans.append((start, samples.at[i - 1]))
            start = None
    if start is not None:
        spans.append((start, samples.at[-1]))
    return spans


async def _budget_waits(http: httpx.AsyncClient, api: str) -> float:
    """The seconds the replica's dispatch waited for the account's budget (its metric)."""
    metric = 'exocall_jobs_wait_seconds_total{kind="dispatch"}'
    for line in (await http.get(f"{api}/metrics")).text.splitlines():
        if line.startswith(metric):
            return float(line.split()[-1])
    return 0.0


def busiest(times: Sequence[float], period: float) -> int:
    """The most of `times` (sorted) in any half-open `period`."""
    most, first = 0, 0
    for last, at in enumerate(times):
        while times[first] <= at - period:
            first += 1
        most = max(most, last - first + 1)
    return most


def windows_while_due(
    times: Sequence[float], spans: Sequence[tuple[float, float]], window: float
) -> list[int]:
    """Requests in each window of `window` seconds, counted from the first request, that lies
    inside a span when calls were due."""
    counts = []
    start = times[0]
    while start < times[-1]:
        end = start + window
        if any(a <= start and end <= b for a, b in spans):
            counts.append(bisect.bisect_left(times, end) - bisect.bisect_left(times, start))
        start = end
    return counts


async def run(
    *,
    replicas: int,
    calls: int,
    scale: float,
    margin: float,
    number_limit: str,
    sample: float,
    dump: Path | None = None,
) -> dict[str, Any]:
    url = await fresh_database()
    window = WINDOW / scale
    intervals = [max(1, round(seconds / scale)) for seconds in INTERVALS]
    the_plan = plan(calls, intervals)
    env = FAKE_ENV | {
        "EXOTEL_RATE_LIMIT": str(LIMIT),
        "EXOTEL_RATE_WINDOW_SECONDS": str(window),
        "EXOTEL_RATE_MARGIN_SECONDS": str(margin),
        "NUMBER_ATTEMPT_LIMIT": number_limit,
    }
    requests = len(the_plan.calls) * 2  # about: the retries add a half to three quarters
    deadline = requests / (LIMIT / window) * 3 + 300
    engine = create_engine(url)
    samples = Samples()
    with tempfile.TemporaryDirectory() as workdir:
        deployment = Deployment(database_url=url, workdir=Path(workdir), env=env)
        try:
            simulator = deployment.start_simulator("--callback-delay", "1")
            apis = [deployment.start_server() for _ in range(replicas)]
            async with httpx.AsyncClient(base_url=apis[0], timeout=120) as http:
                for number, outcomes in the_plan.outcomes.items():
                    response = await http.post(
                        f"{simulator}/_simulator/outcomes",
                        json={"number": number, "outcomes": outcomes},
                    )
                    response.raise_for_status()
                watching = asyncio.create_task(
                    _watch(engine, samples, pause=sample, deadline=deadline)
                )
                started = time.monotonic()
                for chunk in range(0, calls, BATCH):
                    await _queue(http, the_plan.calls[chunk : chunk + BATCH])
                await watching
                wall = time.monotonic() - started
                waited = [await _budget_waits(http, api) for api in apis]
                log = (await http.get(f"{simulator}/_simulator/log")).json()
        finally:
            deployment.stop()
    async with engine.connect() as connection:
        dials = (await connection.execute(select(Dial.number, Dial.sent_at))).all()
        statuses = Counter(await connection.scalars(select(Call.status)))
        attempts = Counter(await connection.scalars(select(func.jsonb_array_length(Call.attempts))))
    await engine.dispose()
    # Exotel's API (recordings are not counted in its rate), as the simulator counts it.
    api = [e for e in log if "/Accounts/" in e["path"]]
    arrived = sorted(e["at"] for e in api if e["status"] not in (401, 429))
    grants = sorted(sent_at.timestamp() for _, sent_at in dials)
    if dump:
        raw = {
            "samples": [samples.at, samples.due, samples.open],
            "requests": api,
            "dials": [(number, sent_at.timestamp()) for number, sent_at in dials],
        }
        await asyncio.to_thread(dump.write_text, json.dumps(raw))
    per_number: defaultdict[str, list[float]] = defaultdict(list)
    for number, sent_at in dials:
        per_number[number].append(sent_at.timestamp())
    period = NumberLimit.parse(number_limit).period.total_seconds()
    busiest_number = max(busiest(sorted(times), period) for times in per_number.values())
    spans = due_spans(samples)
    counts = windows_while_due(arrived, spans, window)
    return {
        "replicas": replicas,
        "calls": calls,
        "busy_first": the_plan.busy_first,
        "shared_numbers": sum(1 for times in per_number.values() if len(times) > 3),
        "window": window,
        "intervals": intervals,
        "wall": wall,
        "budget_waits": waited,
        "requests": len(arrived),
        "connects": sum(1 for e in api if e["path"].endswith("/Calls/connect.json")),
        "lookups": sum(1 for e in api if e["method"] == "GET"),
        "due_seconds": sum(b - a for a, b in spans),
        "windows": counts,
        "busiest_arrived": busiest(arrived, window),
        "busiest_granted": busiest(grants, window),
        "refused_429": sum(1 for e in api if e["status"] == 429),
        "busiest_number": busiest_number,
        "dials": len(dials),
        "statuses": statuses,
        "attempts": attempts,
        "samples": len(samples.at),
    }


def report(result: dict[str, Any], number_limit: str) -> str:
    counts = result["windows"]
    share = [count / LIMIT for count in counts]
    limit = NumberLimit.parse(number_limit)
    at_goal = sum(1 for s in share if s >= 0.95)
    statuses = ", ".join(f"{s} {n}" for s, n in sorted(result["statuses"].items()))
    attempts = ", ".join(f"{a}: {n}" for a, n in sorted(result["attempts"].items()))
    lines = [
        f"replicas={result['replicas']} calls={result['calls']} "
        f"(busy on the first attempt {result['busy_first']}): all final in {result['wall']:.0f} s; "
        f"{result['requests']} requests to Exotel ({result['connects']} Calls/connect, "
        f"{result['lookups']} look-ups)",
    ]
    if share:
        lines.append(
            f"  budget used while calls were due ({len(counts)} windows of "
            f"{result['window']:g} s, {result['due_seconds']:.0f} s due): "
            f"whole {sum(counts) / (LIMIT * len(counts)):.3f}, "
            f"lowest {min(share):.3f}, median {statistics.median(share):.3f}, "
            f"at 0.95 or more {at_goal} of {len(counts)}"
        )
    else:
        lines.append("  budget used while calls were due: no whole window had calls due")
    lines += [
        f"  busiest {result['window']:g} s window: {result['busiest_arrived']} received by the "
        f"simulator, {result['busiest_granted']} Calls/connect granted by exocall (`dial`; limit "
        f"{LIMIT}); "
        f"429s {result['refused_429']}",
        f"  busiest number: {result['busiest_number']} dials in {limit.period.total_seconds():g} s"
        f" (limit {limit.count}); {result['dials']} dials, {result['shared_numbers']} numbers "
        "with more than 3",
        f"  final: {statuses}; attempts per call: {attempts}",
        "  dispatch waited for the budget: "
        + ", ".join(f"{seconds:.0f} s" for seconds in result["budget_waits"])
        + " (each replica's exocall_jobs_wait_seconds_total)",
    ]
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--scale", type=float, default=10.0, help="time runs this much faster")
    parser.add_argument(
        "--margin", type=float, help="EXOTEL_RATE_MARGIN_SECONDS (default: 1 s, scaled)"
    )
    parser.add_argument("--number-limit", default="3/15s", help="NUMBER_ATTEMPT_LIMIT")
    parser.add_argument("--sample", type=float, default=0.25, help="seconds between samples")
    parser.add_argument(
        "--dump", type=Path, help="write each run's samples, requests and dials here (JSON)"
    )
    args = parser.parse_args()
    margin = MARGIN / args.scale if args.margin is None else args.margin
    print(
        f"machine: {platform.machine()}, {platform.system()}, python "
        f"{platform.python_version()}; limit {LIMIT} per {WINDOW / args.scale:g} s (Exotel's "
        f"rate, {args.scale:g} times faster), rate margin {margin:g} s, NUMBER_ATTEMPT_LIMIT "
        f"{args.number_limit}, retry intervals "
        f"{[max(1, round(s / args.scale)) for s in INTERVALS]} s"
    )
    for replicas in args.replicas:
        result = await run(
            replicas=replicas,
            calls=args.calls,
            scale=args.scale,
            margin=margin,
            number_limit=args.number_limit,
            sample=args.sample,
            dump=args.dump and args.dump.with_suffix(f".{replicas}.json"),
        )
        print(report(result, args.number_limit), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
