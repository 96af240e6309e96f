"""exocall through PgBouncer in transaction pooling (DATABASE_PGBOUNCER=true), as large
installations run PostgreSQL: two replicas, a pool of two server connections for all their
client connections, calls placed, dialled and called back.

Debian's pgbouncer (1.18, without prepared statements in transaction mode) is started here in
front of the test database. Without it the test is skipped, and under CI=true it fails instead:
.ci/run installs it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import AUTH, place_body
from tests.support.eventually import eventually, eventually_sync
from tests.support.processes import Deployment, free_ports

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
SERVER_CONNECTIONS = 2  # far fewer than the replicas' pools: every transaction changes hands


@pytest.fixture
def pgbouncer(db_url: str) -> Iterator[str]:
    """The test database's URL, through a PgBouncer in transaction pooling."""
    if not Path(PGBOUNCER).exists():
        if os.environ.get("CI") == "true":
            pytest.fail("no pgbouncer: apt-get install pgbouncer (.ci/run installs it)")
        pytest.skip("no pgbouncer: apt-get install pgbouncer; .ci/run installs it")
    upstream = make_url(db_url)
    (port,) = free_ports(1)
    # Readable by the user pgbouncer drops to (it refuses to run as root).
    directory = Path(tempfile.mkdtemp(prefix="exocall-pgbouncer-"))
    directory.chmod(0o755)
    (directory / "users.txt").write_text(f'"{upstream.username}" ""\n')
    config = directory / "pgbouncer.ini"
    config.write_text(
        f"""[databases]
{upstream.database} = host={upstream.host} port={upstream.port or 5432} dbname={upstream.database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {directory / "users.txt"}
pool_mode = transaction
default_pool_size = {SERVER_CONNECTIONS}
max_client_conn = 500
"""
    )
    argv = [PGBOUNCER, *(["-u", "postgres"] if os.geteuid() == 0 else []), str(config)]
    log = (directory / "pgbouncer.log").open("wb")  # what it prints, for a failing test
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, process, directory / "pgbouncer.log")
        yield make_url(db_url).set(host="127.0.0.1", port=port).render_as_string(False)
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
        shutil.rmtree(directory)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    def listening() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    eventually_sync(listening, what=f"pgbouncer listening on {port}")


async def test_calls_go_through_pgbouncer_in_transaction_pooling(
    pgbouncer: str, deployment: Deployment
) -> None:
    deployment.env |= {"DATABASE_URL": pgbouncer, "DATABASE_PGBOUNCER": "true"}
    deployment.start_simulator("--callback-delay", "0.5")
    replicas = [deployment.start_server(), deployment.start_server()]
    numbers = [f"+91905216{n:03d}{n % 2}" for n in range(20)]  # answered and completed

    async def place(n: int, number: str) -> str:
        async with httpx.AsyncClient(base_url=replicas[n % 2], headers=AUTH, timeout=30) as api:
            response = await api.post("/calls", json=place_body(number))
        assert response.status_code in (201, 202), response.text
        return str(response.json()["id"])

    ids = await asyncio.gather(*(place(n, number) for n, number in enumerate(numbers)))
    async with httpx.AsyncClient(base_url=replicas[0], headers=AUTH, timeout=30) as api:

        async def statuses() -> tuple[Counter[str], list[dict[str, Any]]]:
            calls = [(await api.get(f"/calls/{call_id}")).json() for call_id in ids]
            return Counter(call["status"] for call in calls), calls

        _, calls = await eventually(
            statuses,
            what=f"all {len(ids)} calls completed",
            until=lambda seen: seen[0] == {"completed": len(ids)},
            within=60,
        )
        listed = await api.get("/calls", params={"limit": 50})
    assert all(call["recording_url"] for call in calls)  # every callback was stored
    assert {call["id"] for call in listed.json()["items"]} >= set(ids)
    for process in deployment.processes:
        assert "prepared statement" not in process.output(), process.output()
