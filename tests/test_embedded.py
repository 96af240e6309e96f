"""`exocall serve` with DATABASE_URL unset, as `make run` starts it on a fresh machine: its own
PostgreSQL, stopped with it, and its calls found again by the next start."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

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
def serving(workdir: Path, env: dict[str, str], port: int) -> Iterator[httpx.Client]:
    """`exocall serve` in `workdir`, stopped with Ctrl-C at the end; a client of it."""
    url = f"http://127.0.0.1:{port}"
    process = start_process(
        "serve",
        with_default_sigint([EXOCALL, "serve", "--port", str(port)]),
        env=env,
        cwd=workdir,
        log_path=workdir / "serve.log",
        ready_url=f"{url}/readyz",
    )
    try:
        with httpx.Client(base_url=url, timeout=30) as api:
            yield api
    finally:
        process.popen.send_signal(signal.SIGINT)
        assert process.popen.wait(30) == 0, process.output()
    # A server stopped cleanly leaves no postmaster.pid behind.
    assert not (workdir / "pgdata" / "postmaster.pid").exists(), process.output()


def test_serve_keeps_its_calls_in_a_postgresql_of_its_own(workdir: Path) -> None:
    (port,) = free_ports(1)
    # Nothing configured: not even PUBLIC_BASE_URL, which follows the port served on.
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith((*STRAY_ENV, "DATABASE_URL"))
    }
    subprocess.run([EXOCALL, "migrate"], env=env, cwd=workdir, check=True, capture_output=True)
    assert not (workdir / "pgdata" / "postmaster.pid").exists()  # stopped by migrate too

    with serving(workdir, env, port) as api:
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
