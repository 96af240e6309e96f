"""`exocall serve` with nothing configured, as `make run` starts it on a fresh machine: its own
PostgreSQL, stopped with it, and its calls found again by the next start; on any port, the
built-in simulator's callbacks reach it, and the URLs the commands print are its own."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from app.db.embedded import quarter_of_memory
from tests.support.eventually import eventually_sync
from tests.support.processes import (
    EXOCALL,
    STRAY_ENV,
    free_ports,
    start_process,
    with_default_sigint,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Not under pytest's temporary directory, which only its owner may enter: under root the
    # server runs as another user.
    directory = Path(tempfile.mkdtemp(prefix="exocall-embedded-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def serving(
    workdir: Path, env: dict[str, str], port: int, *, stop: signal.Signals = signal.SIGINT
) -> Iterator[httpx.Client]:
    """`exocall serve` in `workdir`, stopped with `stop` at the end (Ctrl-C, or SIGTERM as
    Docker and systemd send); a client of it."""
    url = f"http://127.0.0.1:{port}"
    argv = [EXOCALL, "serve", "--host", "127.0.0.1", "--port", str(port)]  # as `make run`
    process = start_process(
        "serve",
        with_default_sigint(argv),
        env=env,
        cwd=workdir,
        log_path=workdir / "serve.log",
        ready_url=f"{url}/readyz",
    )
    try:
        with httpx.Client(base_url=url, timeout=30) as api:
            yield api
    finally:
        process.popen.send_signal(stop)
        exit_status = 0 if stop == signal.SIGINT else 128 + stop
        assert process.popen.wait(30) == exit_status, process.output()
    # A server stopped cleanly leaves no postmaster.pid behind.
    assert not (workdir / "pgdata" / "postmaster.pid").exists(), process.output()


@pytest.fixture
def env() -> dict[str, str]:
    """Nothing configured: not even PUBLIC_BASE_URL, which follows the port served on."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith((*STRAY_ENV, "DATABASE_URL"))
    }


def test_serve_keeps_its_calls_in_a_postgresql_of_its_own(
    workdir: Path, env: dict[str, str]
) -> None:
    (port,) = free_ports(1)
    subprocess.run([EXOCALL, "migrate"], env=env, cwd=workdir, check=True, capture_output=True)
    assert not (workdir / "pgdata" / "postmaster.pid").exists()  # stopped by migrate too
    # Made with a quarter of the memory for its buffers, in the file its owner edits.
    settings = (workdir / "pgdata" / "postgresql.conf").read_text().splitlines()
    assert f"shared_buffers = {quarter_of_memory() // 2**20}MB" in [
        line.split("#")[0].strip() for line in settings
    ]

    with serving(workdir, env, port, stop=signal.SIGTERM) as api:
        placed = api.post(
            "/calls", json={"from": "09052161110", "app_id": "926", "caller_id": "08030752400"}
        )
        # Sent (201), or still being sent when DISPATCH_WAIT_SECONDS (its default) ran out.
        assert placed.status_code in (httpx.codes.CREATED, httpx.codes.ACCEPTED), placed.text
        call_id = placed.json()["id"]
        eventually_sync(
            lambda: api.get(f"/calls/{call_id}").json()["status"],
            what=f"call {call_id} completed",
            until=lambda status: status == "completed",
            within=60,
        )

    with serving(workdir, env, port) as api:
        assert api.get(f"/calls/{call_id}").json()["status"] == "completed"


def test_make_run_on_any_port_ends_a_call_by_the_simulators_callback(
    workdir: Path, env: dict[str, str]
) -> None:
    """`PORT=<any> make run`: the built-in simulator's status callback, not reconciliation
    (a minute later), ends the call; its own routes answer where docs/simulator.md says; and
    `exocall callback-url` and `passthru-url` print URLs of this server that it accepts."""
    (port,) = free_ports(1)
    subprocess.run([EXOCALL, "migrate"], env=env, cwd=workdir, check=True, capture_output=True)
    printed = {
        command: _printed([EXOCALL, command, "--port", str(port)], env, workdir)
        for command in ("callback-url", "passthru-url")
    }

    with serving(workdir, env, port) as api:
        placed = api.post(
            "/calls", json={"from": "09052161110", "app_id": "926", "caller_id": "08030752400"}
        )
        assert placed.status_code == httpx.codes.CREATED, placed.text
        call = placed.json()
        eventually_sync(
            lambda: api.get(f"/calls/{call['id']}").json()["status"],
            until=lambda status: status == "completed",
            what="the call completed",
            within=60,
        )

        # How it ended: the simulator's callback, applied; no look-up was needed.
        received = {e["kind"]: e for e in api.get(f"/calls/{call['id']}/events").json()}
        assert sorted(received) == ["dispatch", "status_callback"]
        callback = received["status_callback"]
        assert (callback["status"], callback["outcome"]) == ("completed", "applied")

        # The simulator's own routes, at the paths the docs give.
        log = api.get("/_simulator/log").json()
        assert [e["sid"] for e in log if "/Calls/connect" in e["path"]] == [call["sid"]]
        fault = api.post("/_simulator/recording-faults", json={"status": 500})
        assert fault.json() == {"queued": 1}

        # The printed URLs are this server's, on its port, and it takes what comes to them.
        base = f"http://127.0.0.1:{port}/"
        assert printed["callback-url"].startswith(f"{base}status-callback?token=")
        assert printed["passthru-url"].startswith(f"{base}passthru?token=")
        again = {"CallSid": call["sid"], "Status": "completed", "RecordingUrl": ""}
        repeated = httpx.post(printed["callback-url"], data=again)
        assert (repeated.status_code, repeated.json()["outcome"]) == (200, "duplicate"), (
            repeated.text
        )
        query = urlencode({"CallSid": call["sid"], "digits": '"1"'})
        keyed = httpx.get(f"{printed['passthru-url']}&{query}")
        assert (keyed.status_code, keyed.json()["outcome"]) == (200, "applied"), keyed.text


def test_the_printed_urls_follow_public_base_url_when_it_is_set(
    workdir: Path, env: dict[str, str]
) -> None:
    env |= {"PUBLIC_BASE_URL": "https://exocall.example.com"}
    for command, path in (("callback-url", "status-callback"), ("passthru-url", "passthru")):
        printed = _printed([EXOCALL, command, "--port", "19100"], env, workdir)
        assert printed.startswith(f"https://exocall.example.com/{path}?token="), printed


def _printed(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(argv, env=env, cwd=cwd, check=True, capture_output=True, text=True)
    return done.stdout.strip()
