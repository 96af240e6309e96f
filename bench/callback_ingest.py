"""Status callback ingestion: durable callbacks per second against a bare FastAPI reference.

Starts `exocall serve` on PostgreSQL with calls already placed, and replays valid, authenticated,
Exotel-shaped multipart status callbacks at it with wrk (Debian: `apt-get install wrk`). In the
same run, with the same load and server settings, it measures a reference: a bare FastAPI app
whose endpoint parses the same multipart body and writes nothing. Then it checks the database:
every callback answered 200 is in `call_event` exactly once, and applied to its call.

    .venv/bin/python -m bench.callback_ingest                 # 1 worker, then 2
    .venv/bin/python -m bench.callback_ingest --workers 1 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import func, select

from app.calls.callback_auth import sign
from app.db.clock import db_now
from app.db.models import Call, CallStatus, Receipt
from app.db.session import create_engine, create_sessionmaker
from app.ids import new_id
from bench import fresh_database
from tests.support.processes import free_ports

SECRET = "bench-fake-callback-secret"
CALLS = 2000
CONNECTIONS = 32
REFERENCE_APP = textwrap.dedent(
    """
    from fastapi import FastAPI, Request

    app = FastAPI()

    @app.post("/status-callback")
    async def status_callback(request: Request) -> dict[str, bool]:
        await request.form()
        return {"ok": True}
    """
)


@dataclass(frozen=True)
class Load:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    answered_200: int
    other: int
    peak_rss_mib: float
    server_cpu: float  # of one core, during the load
    postgres_cpu: float


async def placed_calls(url: str, count: int = CALLS) -> list[tuple[uuid.UUID, str]]:
    """Calls as Exotel accepted them: in progress, SID known; their ids time-ordered, as the
    service makes them (app.ids), the SIDs random, as Exotel's."""
    engine = create_engine(url)
    calls = [(new_id(), uuid.uuid4().hex[:30] + "9g") for _ in range(count)]
    async with create_sessionmaker(engine)() as session, session.begin():
        now = await db_now(session)
        session.add_all(
            Call(
                id=call_id,
                sid=sid,
                status=CallStatus.IN_PROGRESS,
                from_number=f"+9190{n:08d}",
                caller_id="08030752400",
                flow_url="http://my.exotel.com/bench/exoml/start_voice/1",
                created_at=now,
                updated_at=now,
            )
            for n, (call_id, sid) in enumerate(calls)
        )
    await engine.dispose()
    return calls


BOUNDARY = "exotelboundary7MA4YWxkTrZu0gW"


def four_fields(sid: str) -> dict[str, str]:
    """The fields Exotel always sends, of a completed call."""
    return {
        "CallSid": sid,
        "Status": "completed",
        "RecordingUrl": f"https://s3-ap-southeast-1.amazonaws.com/exotelrecordings/b/{sid}.mp3",
        "DateUpdated": "2024-09-16 15:51:00",
    }


def whole_callback(sid: str) -> dict[str, str]:
    """Every field of the callback ending a completed call that asked for its events, as
    Exotel posts it (multipart: `Legs` flattened), the shape of most callbacks a history
    keeps."""
    return four_fields(sid) | {
        "EventType": "terminal",
        "DateCreated": "2024-09-16 15:50:02",
        "To": "",
        "From": "09052161110",
        "PhoneNumberSid": "08030752400",
        "StartTime": "2024-09-16 15:50:02",
        "EndTime": "2024-09-16 15:51:00",
        "ConversationDuration": "41",
        "Direction": "outbound-api",
        "CustomField": "order-33847",
        "Legs[0][OnCallDuration]": "58",
        "Legs[0][Status]": "completed",
    }


def multipart_body(fields: dict[str, str]) -> str:
    """`fields` as Exotel posts them: multipart/form-data, text fields only."""
    parts = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    )
    return "".join(parts) + f"--{BOUNDARY}--\r\n"


def wrk_script(
    calls: list[tuple[uuid.UUID, str]],
    path: Path,
    fields: Callable[[str], dict[str, str]] = four_fields,
) -> None:
    """Each request: one call's callback URL and `fields` of its SID (by default the four
    Exotel always sends), as multipart; `response()` counts the answers by status."""
    entries = []
    for call_id, sid in calls:
        body = multipart_body(fields(sid))
        query = f"call_id={call_id}&token={sign(SECRET.encode(), call_id)}"
        lua_body = body.replace("\\", "\\\\").replace('"', '\\"').replace("\r\n", "\\r\\n")
        entries.append(f'{{"/status-callback?{query}", "{lua_body}"}}')
    path.write_text(
        textwrap.dedent(
            f"""
            local calls = {{ {",".join(entries)} }}
            local counter = 0
            ok, other = 0, 0  -- globals, so that done() can read them from every thread
            local threads = {{}}
            function setup(thread) table.insert(threads, thread) end
            function init(args) counter = math.random(#calls) end
            function request()
              counter = counter % #calls + 1
              local call = calls[counter]
              return wrk.format("POST", call[1], {{
                ["Content-Type"] = "multipart/form-data; boundary={BOUNDARY}"
              }}, call[2])
            end
            function response(status, headers, body)
              if status == 200 then ok = ok + 1 else other = other + 1 end
            end
            function done(summary, latency, requests)
              local total_ok, total_other = 0, 0
              for _, thread in ipairs(threads) do
                total_ok = total_ok + thread:get("ok")
                total_other = total_other + thread:get("other")
              end
              io.write(string.format("answered_200=%d other=%d\\n", total_ok, total_other))
              io.write(string.format("p50_us=%d p99_us=%d\\n",
                latency:percentile(50), latency:percentile(99)))
            end
            """
        )
    )


def server_env(url: str, work: Path, **settings: str) -> dict[str, str]:
    """The environment of an `exocall serve` under load: this one's, without any Exotel
    credentials, callback secrets or API keys of the shell, and fake ones in their place."""
    ours = ("EXOTEL_", "CALLBACK", "API_KEYS")
    return {k: v for k, v in os.environ.items() if not k.startswith(ours)} | {
        "DATABASE_URL": url,
        "CALLBACK_SECRETS": SECRET,
        "EXOTEL_ACCOUNT_SID": "bench-account",
        "EXOTEL_API_KEY": "bench-fake-key",
        "EXOTEL_API_TOKEN": "bench-fake-token",
        "EXOTEL_API_BASE_URL": "http://127.0.0.1:9",  # nothing is dialled: no queued calls
        "SPOOL_DIR": str(work / "spool"),
        **settings,
    }


def measure(argv: list[str], env: dict[str, str], script: Path, duration: int) -> Load:
    """Start the server `argv` on a free port, load it with wrk, stop it."""
    (port,) = free_ports(1)
    with tempfile.NamedTemporaryFile(suffix=".log") as log:
        server = serve([*argv, "--port", str(port)], env, port, Path(log.name))
        try:
            return load(port, script, duration, server)
        finally:
            server.terminate()
            server.wait()


def serve(
    argv: list[str], env: dict[str, str], port: int, log: Path, *, ready_path: str = "/docs"
) -> subprocess.Popen[bytes]:
    """Start `argv` and wait until it answers on `ready_path`. It is killed if it never does,
    or if the wait is cut short (a test's time-out, ^C): never left running."""
    with log.open("wb") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=1)
                return process
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"{argv} did not start:\n{log.read_text()}")
    except BaseException:
        process.kill()
        process.wait()
        raise


def peak_rss_mib(process: subprocess.Popen[bytes]) -> float:
    """Peak resident memory of the process and its children (uvicorn's workers)."""
    pids = [process.pid, *_children(process.pid)]
    total_kib = 0
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        total_kib += int(re.search(r"VmHWM:\s+(\d+)", status)[1])  # type: ignore[index]
    return total_kib / 1024


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """CPU time (user and system) each process has used so far."""
    used = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except FileNotFoundError:  # ended meanwhile
            continue
        used[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return used


def cores_used(before: dict[int, float], after: dict[int, float], elapsed: float) -> float:
    """Cores kept busy between the two readings; a process started meanwhile counts whole."""
    return sum(used - before.get(pid, 0) for pid, used in after.items()) / elapsed


def postgres_pids() -> list[int]:
    return [
        int(path.parent.name)
        for path in Path("/proc").glob("[0-9]*/comm")
        if _read(path) == "postgres\n"
    ]


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def load(port: int, script: Path, duration: int, process: subprocess.Popen[bytes]) -> Load:
    server = [process.pid, *_children(process.pid)]
    server_before, postgres_before = cpu_seconds(server), cpu_seconds(postgres_pids())
    started = time.monotonic()
    result = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{CONNECTIONS}",
            f"-d{duration}s",
            "-s",
            str(script),
            "--latency",
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
    )
    elapsed = time.monotonic() - started
    # (The callback writers' own connections, and so their PostgreSQL backends, start with the
    # load.)
    server_cpu = cores_used(server_before, cpu_seconds(server), elapsed)
    postgres_cpu = cores_used(postgres_before, cpu_seconds(postgres_pids()), elapsed)
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed: {result.stderr}{result.stdout}")
    out = result.stdout
    return Load(
        requests_per_second=float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),  # type: ignore[index]
        p50_ms=int(re.search(r"p50_us=(\d+)", out)[1]) / 1000,  # type: ignore[index]
        p99_ms=int(re.search(r"p99_us=(\d+)", out)[1]) / 1000,  # type: ignore[index]
        answered_200=int(re.search(r"answered_200=(\d+)", out)[1]),  # type: ignore[index]
        other=int(re.search(r"other=(\d+)", out)[1]),  # type: ignore[index]
        peak_rss_mib=peak_rss_mib(process),
        server_cpu=server_cpu,
        postgres_cpu=postgres_cpu,
    )


async def check_database(url: str, calls: list[tuple[uuid.UUID, str]], answered: int) -> str:
    engine = create_engine(url)
    async with create_sessionmaker(engine)() as session:
        events = await session.scalar(select(func.count()).select_from(Receipt))
        receipts = await session.scalar(select(func.count(func.distinct(Receipt.receipt_id))))
        unattached = await session.scalar(
            select(func.count()).select_from(Receipt).where(Receipt.call_id.is_(None))
        )
        completed = await session.scalar(
            select(func.count()).select_from(Call).where(Call.status == CallStatus.COMPLETED)
        )
    await engine.dispose()
    # wrk stops counting with requests still in flight (at most one per connection): those are
    # stored but their 200s were not counted. More would mean a callback stored twice, or
    # stored without its 200; fewer, a 200 for a callback not stored.
    in_flight = (events or 0) - answered
    ok = events == receipts and unattached == 0 and 0 <= in_flight <= CONNECTIONS
    return (
        f"{'OK' if ok else 'MISMATCH'}: answered 200 {answered}, stored {events} "
        f"({in_flight} answered after wrk stopped counting), distinct receipts {receipts}, "
        f"unattached {unattached}; calls completed {completed}/{len(calls)}"
    )


async def run(workers: int, duration: int) -> None:
    url = await fresh_database()
    calls = await placed_calls(url)
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        script = work / "callbacks.lua"
        wrk_script(calls, script)
        (work / "reference.py").write_text(REFERENCE_APP)
        env = server_env(url, work)
        server_options = ["--workers", str(workers), "--no-access-log"]
        uvicorn = [str(bin_dir / "uvicorn"), "reference:app", "--log-level", "warning"]
        ref = measure(
            [*uvicorn, *server_options], env | {"PYTHONPATH": str(work)}, script, duration
        )
        ours = measure([str(bin_dir / "exocall"), "serve", *server_options], env, script, duration)
    verdict = await check_database(url, calls, ours.answered_200)
    print(
        f"workers={workers} reference: {ref.requests_per_second:,.0f} req/s "
        f"p50 {ref.p50_ms:.1f} ms p99 {ref.p99_ms:.1f} ms peak RSS {ref.peak_rss_mib:.0f} MiB\n"
        f"workers={workers} exocall:   {ours.requests_per_second:,.0f} durable callbacks/s "
        f"({ours.requests_per_second / ref.requests_per_second:.2f} of the reference) "
        f"p50 {ours.p50_ms:.1f} ms p99 {ours.p99_ms:.1f} ms peak RSS {ours.peak_rss_mib:.0f} MiB, "
        f"non-200 answers {ours.other}\n"
        f"workers={workers} CPU, in cores: reference {ref.server_cpu:.2f} "
        f"({ref.server_cpu / ref.requests_per_second * 1e6:.0f} µs a request); exocall "
        f"{ours.server_cpu:.2f} ({ours.server_cpu / ours.requests_per_second * 1e6:.0f} µs a "
        f"callback) and PostgreSQL {ours.postgres_cpu:.2f}\n"
        f"workers={workers} database: {verdict}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--duration", type=int, default=20, help="seconds of load per run")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, {platform.system()}, "
        f"python {platform.python_version()}; PostgreSQL on the same host; wrk -t2 "
        f"-c{CONNECTIONS} -d{args.duration}s, multipart bodies of Exotel's four fields"
    )
    for workers in args.workers:
        await run(workers, args.duration)


if __name__ == "__main__":
    asyncio.run(main())
