"""The image built by a real engine and the compose stack run from the project's own
docker-compose.yml, then broken on purpose: a replica SIGKILLed and PostgreSQL restarted, each
with calls in flight; last, the api switched to the `pgbouncer` profile.

What the contract promises is asserted: every answer is a call or a refusal in the error shape,
never a 500; no call the client was told failed is dialled; every call accepted is dialled once
and ends; and the proxy believes no client's own X-Forwarded-For. The time each step took is
printed at the end (docs/operations.md, "The stack, for real"), never asserted.

The engine is Debian's dockerd, and the base images are stand-ins built from Debian's packages
(no registry is reachable here): PostgreSQL 15 stands in for 16, Debian's nginx 1.22 for Alpine's
1.27 (tests/support/docker_engine.py, deploy/standins/). Without an engine the test is skipped,
and under CI=true it fails instead: .ci/run installs one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import shutil
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import AUTH, FAKE_ACCOUNT_SID
from tests.support import docker_engine
from tests.support.eventually import eventually, eventually_sync
from tests.support.processes import free_ports

# One xdist worker runs them all, in turn: they share one stack (a module fixture), on the engine.
pytestmark = [pytest.mark.stack, pytest.mark.timeout(1800), pytest.mark.xdist_group("docker")]

ROOT = Path(__file__).resolve().parents[2]
# The engine is the machine's, and another checkout's test run may have a stack on it too: this
# run's project, image tag and network are its own.
RUN = uuid.uuid4().hex[:8]
PROJECT = f"exocall-stack-test-{RUN}"
SUBNET = f"10.{random.randrange(200, 250)}.{random.randrange(256)}"  # a /24 of its own
# PostgreSQL's shared_buffers in the stack: not .env.example's, to see that .env reaches it.
SHARED_BUFFERS = "192MB"
TERMINAL = {"completed", "busy", "no-answer", "failed", "canceled", "rejected"}
SETTLE_DEADLINE_SECONDS = 180.0  # bounds waiting; never asserted on
# Every call is placed with these: a send that a SIGKILL cut short before it reached Exotel is
# `unknown` until its ring and talk time are past, then `rejected` (Exotel has no record of it).
# Short, so that reconciliation settles such a call well within the deadline.
LIMITS = {"time_out": 5, "time_limit": 5}

# What the stack runs with, besides .env.example: quicker repairs, and health checked every
# second (each check is the stack's own), so that the test need not wait the production
# defaults out. (The api reads the env file as the stack's own .env would be read:
# `cp .env.example .env`.)
OVERRIDE = """
x-checked-often: &checked-often
  healthcheck:
    interval: 1s
    retries: 120  # a slow start on a loaded machine is not unhealthy
services:
  postgres:
    <<: *checked-often
  pgbouncer:
    <<: *checked-often
  proxy:
    <<: *checked-often
  simulator:
    <<: *checked-often
    command: ["exocall", "simulator", "--host", "0.0.0.0", "--port", "8001",
              "--callback-delay", "1"]
  api:
    <<: *checked-often
    env_file: ["{env_file}"]
    environment:
      EXOTEL_TIMEOUT_SECONDS: "5"
      DISPATCH_WAIT_SECONDS: "20"
      RECONCILE_INTERVAL_SECONDS: "2"
      RECONCILE_GRACE_SECONDS: "5"
      RECONCILE_FIRST_LOOKUP_SECONDS: "2"
      RECONCILE_RECHECK_SECONDS: "5"
      SPOOL_REPLAY_SECONDS: "1"
"""


@dataclass
class Stack:
    engine: docker_engine.Engine
    env_file: Path  # .env.example, and the test's own settings after it
    override: Path
    url: str
    steps: list[tuple[str, float]] = field(default_factory=list)

    def compose(self, *args: str, timeout: float = 600) -> str:
        command = ["compose", "--project-name", PROJECT, "--project-directory", str(ROOT)]
        command += ["--env-file", str(self.env_file)]
        command += ["--file", str(ROOT / "docker-compose.yml"), "--file", str(self.override)]
        result = self.engine.docker(*command, *args, timeout=timeout, check=False)
        assert result.returncode == 0, f"docker {' '.join(args)}:\n{result.stdout}{result.stderr}"
        return result.stdout

    def step(self, name: str, started: float) -> None:
        self.steps.append((name, time.monotonic() - started))

    def containers(self, service: str) -> list[dict[str, Any]]:
        out = self.compose("ps", "--all", "--format", "json", service)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def logs(self, container: str) -> str:
        result = self.engine.docker("logs", container, check=False)
        return result.stdout + result.stderr

    def dialled(self) -> Counter[str]:
        """How many times the simulator dialled each number, from its call details."""
        script = (
            "import base64, json, os, urllib.request\n"
            f"url = 'http://127.0.0.1:8001/v1/Accounts/{FAKE_ACCOUNT_SID}/Calls.json?PageSize=100'\n"
            # The account's credentials, as compose gives them to the simulator.
            "key = os.environ['EXOTEL_API_KEY'] + ':' + os.environ['EXOTEL_API_TOKEN']\n"
            "auth = base64.b64encode(key.encode()).decode()\n"
            "numbers = []\n"
            "while url:\n"
            "    headers = {'Authorization': 'Basic ' + auth}\n"
            "    request = urllib.request.Request(url, headers=headers)\n"
            "    page = json.load(urllib.request.urlopen(request))\n"
            "    numbers += [call['From'] for call in page['Calls']]\n"
            "    after = page['Metadata'].get('NextPageUri')\n"
            "    url = after and 'http://127.0.0.1:8001' + after\n"
            "print(json.dumps(numbers))\n"
        )
        out = self.compose("exec", "-T", "simulator", "python", "-c", script)
        return Counter(json.loads(out))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[Stack]:
    lacking = docker_engine.missing()
    if lacking:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{lacking} (.ci/run installs it)")
        pytest.skip(f"{lacking}; .ci/run installs it and runs this test")
    workdir = tmp_path_factory.mktemp("stack")
    env_file = workdir / "stack.env"
    shutil.copy(ROOT / ".env.example", env_file)
    (port,) = free_ports(1)
    with env_file.open("a") as file:
        # Its own network and port: a stack of the developer's own may be running beside it.
        file.write(
            f"\nPROXY_PORT={port}\nEXOCALL_SUBNET={SUBNET}.0/24\n"
            f"EXOCALL_DYNAMIC_RANGE={SUBNET}.0/25\nEXOCALL_PROXY_ADDRESS={SUBNET}.250\n"
            f"EXOCALL_IMAGE=exocall:stack-test-{RUN}\n"
            f"POSTGRES_SHARED_BUFFERS={SHARED_BUFFERS}\n"
        )
    override = workdir / "override.yml"
    override.write_text(OVERRIDE.format(env_file=env_file))
    started = time.monotonic()
    with docker_engine.engine(workdir) as engine:
        stack = Stack(engine, env_file, override, url=f"http://127.0.0.1:{port}")
        stack.step("engine and stand-in images ready", started)
        try:
            started = time.monotonic()
            stack.compose("build", "--quiet")
            stack.step("image built", started)
            started = time.monotonic()
            stack.compose("up", "--detach", "--wait")
            stack.step("stack up, healthy", started)
            yield stack
        finally:
            stack.compose("--profile", "pgbouncer", "down", "--volumes", "--timeout", "5")
            engine.docker("image", "rm", f"exocall:stack-test-{RUN}", check=False)  # the tag
            capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
            with capture.global_and_fixture_disabled():
                print()
                for name, seconds in stack.steps:
                    print(f"stack: {name}: {seconds:.1f} s")


# --- A client, as the services that use exocall are ----------------------------------------


@dataclass
class Placed:
    number: str
    key: str
    answers: list[tuple[int, Any]] = field(default_factory=list)  # every answer, in order
    waited: list[float] = field(default_factory=list)  # seconds for each answer

    @property
    def call_id(self) -> str | None:
        for status, body in self.answers:
            if status in (201, 202):
                return str(body["id"])
        return None


def number(n: int) -> str:
    """Distinct numbers ending in 0 or 1, in the `0`-prefixed form the simulator answers with:
    it answers and completes those calls."""
    return f"0905{n:06d}{n % 2}"


async def place(api: httpx.AsyncClient, placed: Placed, *, retry: bool, attempts: int = 20) -> None:
    """POST /calls, with its Idempotency-Key; retried as a careful client does (the same key)
    while the answer says to try again, when `retry`."""
    for _ in range(attempts):
        sent = time.monotonic()
        try:
            response = await api.post(
                "/calls",
                json={"from": placed.number, "app_id": "926", **LIMITS},
                headers={"Idempotency-Key": placed.key},
            )
        except httpx.TransportError as exc:
            placed.answers.append((0, repr(exc)))
        else:
            placed.waited.append(time.monotonic() - sent)
            body = response.json()
            placed.answers.append((response.status_code, body))
            if response.status_code < 500:
                return
        if not retry:
            return
        await asyncio.sleep(1)


def assert_contract(calls: list[Placed]) -> None:
    for placed in calls:
        for status, body in placed.answers:
            assert status != 500, (placed.number, body)
            if status in (201, 202):
                assert body["id"], body
                assert body["status"], body
            elif status >= 400:
                # Ours or nginx's: always the one error shape.
                assert body["error"]["code"], (status, body)


async def settle(api: httpx.AsyncClient, call_ids: list[str]) -> dict[str, dict[str, Any]]:
    async def seen() -> tuple[Counter[str], dict[str, dict[str, Any]]]:
        calls = {}
        for call_id in call_ids:
            response = await api.get(f"/calls/{call_id}")
            if response.status_code == 200:
                calls[call_id] = response.json()
        return Counter(call["status"] for call in calls.values()), calls

    def settled(seen: tuple[Counter[str], dict[str, dict[str, Any]]]) -> bool:
        statuses, calls = seen
        return len(calls) == len(call_ids) and set(statuses) <= TERMINAL

    _, calls = await eventually(
        seen,
        what=f"all {len(call_ids)} calls ended (their statuses)",
        until=settled,
        within=SETTLE_DEADLINE_SECONDS,
        pause=1,
    )
    return calls


def client(stack: Stack) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=stack.url, headers=AUTH, timeout=60)


async def placed_and_ended(stack: Stack, numbered: range) -> dict[str, dict[str, Any]]:
    """Calls to numbers `numbered`, placed at once (201: Exotel accepted each), all completed."""
    calls = [Placed(number(n), uuid.uuid4().hex) for n in numbered]
    async with client(stack) as api:
        await asyncio.gather(*(place(api, placed, retry=False) for placed in calls))
        assert_contract(calls)
        assert all(placed.answers[-1][0] == 201 for placed in calls), [c.answers for c in calls]
        final = await settle(api, [str(placed.call_id) for placed in calls])
    assert {call["status"] for call in final.values()} == {"completed"}
    return final


# --- The stack, used and broken ------------------------------------------------------------


@pytest.mark.anyio
async def test_calls_placed_through_the_proxy_end(stack: Stack) -> None:
    started = time.monotonic()
    final = await placed_and_ended(stack, range(1, 6))
    assert all(call["recording_url"] for call in final.values())  # the callback came back
    stack.step("5 calls placed through the proxy and ended", started)

    # Their recordings, fetched from the simulator with the account's credentials, are kept
    # in the recordings volume and served through the proxy as they were fetched.
    started = time.monotonic()
    async with client(stack) as api:

        async def calls_() -> list[dict[str, Any]]:
            return [(await api.get(f"/calls/{call_id}")).json() for call_id in final]

        calls = await eventually(
            calls_,
            what="every recording archived",
            until=lambda calls: all(c["recording"]["status"] == "archived" for c in calls),
            within=SETTLE_DEADLINE_SECONDS,
            pause=1,
        )
        recordings = [call["recording"] for call in calls]
        served = await api.get(f"/calls/{calls[0]['id']}/recording")
    assert served.status_code == 200
    assert hashlib.sha256(served.content).hexdigest() == recordings[0]["sha256"]
    stack.step("their 5 recordings archived and one served", started)


@pytest.mark.anyio
async def test_no_client_chooses_its_address(stack: Stack) -> None:
    spoofed = "203.0.113.66"  # TEST-NET-3: no client has it
    probe = f"/calls/{uuid.uuid4()}"
    async with client(stack) as api:
        response = await api.get(probe, headers={"X-Forwarded-For": spoofed})
    assert response.status_code == 404
    (api_container,) = [c["Name"] for c in stack.containers("api")]
    (line,) = [line for line in stack.logs(api_container).splitlines() if probe in line]
    assert spoofed not in line, line  # the address nginx saw, not the one the client wrote


@pytest.mark.anyio
async def test_three_replicas_each_serve(stack: Stack) -> None:
    started = time.monotonic()
    _scale(stack, 3)
    stack.step("scaled to 3 replicas, healthy", started)
    probes = [f"/calls/{uuid.uuid4()}" for _ in range(30)]
    async with client(stack) as api:
        for probe in probes:
            assert (await api.get(probe)).status_code == 404
    served = {
        container["Name"]: sum(probe in stack.logs(container["Name"]) for probe in probes)
        for container in stack.containers("api")
    }
    assert len(served) == 3, served
    assert all(count > 0 for count in served.values()), served


@pytest.mark.anyio
async def test_a_replica_sigkilled_with_calls_in_flight(stack: Stack) -> None:
    started = time.monotonic()
    calls = [Placed(number(n), uuid.uuid4().hex) for n in range(100, 130)]
    victim = stack.containers("api")[0]["Name"]
    pid = int(stack.engine.docker("inspect", "--format", "{{.State.Pid}}", victim).stdout)
    async with client(stack) as api:
        sending = [asyncio.create_task(place(api, placed, retry=True)) for placed in calls]
        await eventually(
            lambda: sum(bool(placed.answers) for placed in calls), what="a first call answered"
        )
        os.kill(pid, signal.SIGKILL)  # a crash, not a stop: the restart policy brings it back
        killed_at = time.monotonic()
        await asyncio.gather(*sending)
        assert_contract(calls)
        assert all(placed.call_id for placed in calls), [c.answers for c in calls]
        final = await settle(api, [str(placed.call_id) for placed in calls])
    cut_short = sum(call["status"] == "rejected" for call in final.values())
    stack.step(f"30 calls, a replica SIGKILLed: all ended ({cut_short} never sent)", started)
    slowest = max(seconds for placed in calls for seconds in placed.waited)
    retried = sum(len(placed.answers) > 1 for placed in calls)
    stack.steps.append((f"  the slowest answer around the kill ({retried} calls retried)", slowest))
    # The kill can land between a claim's commit and its request to Exotel.
    assert_dialled_once_or_never_sent(stack, calls, final)
    _wait_until_running(stack, victim, since=killed_at)
    stack.step("the killed replica restarted by its policy", killed_at)


def assert_dialled_once_or_never_sent(
    stack: Stack, calls: list[Placed], final: dict[str, dict[str, Any]]
) -> Counter[str]:
    """Each call was dialled once and completed, or was cut short between its claim's commit
    and its send: never dialled, and resolved by reconciliation (never by dialling it) as
    `rejected` with `exotel_no_record`. What was dialled, by number."""
    dialled = stack.dialled()
    for placed in calls:
        call = final[str(placed.call_id)]
        if call["status"] == "rejected":
            assert call["error"]["code"] == "exotel_no_record", call
            assert dialled[placed.number] == 0, (placed.number, dialled)
        else:
            assert call["status"] == "completed", call
            assert dialled[placed.number] == 1, (placed.number, dialled)  # never twice
    return dialled


@pytest.mark.anyio
async def test_postgres_restarted_with_calls_in_flight(stack: Stack) -> None:
    started = time.monotonic()
    calls = [Placed(number(n), uuid.uuid4().hex) for n in range(200, 240)]
    async with client(stack) as api:

        async def stream() -> None:
            for placed in calls:  # one after another, through the restart; never retried
                await place(api, placed, retry=False)
                await asyncio.sleep(0.1)

        sending = asyncio.create_task(stream())
        await eventually(lambda: calls[0].answers, what="the first call answered")
        await asyncio.to_thread(stack.compose, "restart", "postgres")
        restarted_at = time.monotonic()
        await sending
        assert_contract(calls)
        accepted = [placed for placed in calls if placed.call_id]
        refused = [placed for placed in calls if not placed.call_id]
        for placed in refused:
            ((status, body),) = placed.answers
            assert status == 503, body
            assert body["error"]["code"] == "database_unavailable", body
        final = await settle(api, [str(placed.call_id) for placed in accepted])
    stack.step(
        f"40 calls through a PostgreSQL restart ({len(refused)} answered 503): all accepted "
        "ones ended",
        started,
    )
    stack.steps.append(
        ("  the last accepted call ended, after the restart", time.monotonic() - restarted_at)
    )
    # A claim carries what the send needs, and an answer that cannot be recorded waits for the
    # database: every call accepted is dialled, once, whenever the restart lands.
    dialled = stack.dialled()
    for placed in accepted:
        assert final[str(placed.call_id)]["status"] == "completed", final[str(placed.call_id)]
        assert dialled[placed.number] == 1, (placed.number, dialled)
    assert not any(dialled[placed.number] for placed in refused), dialled  # told failed


def test_postgres_takes_its_memory_from_the_env_file(stack: Stack) -> None:
    shown = stack.compose(
        "exec", "-T", "postgres", "psql", "--username=exocall", "--dbname=exocall",
        "--tuples-only", "--no-align", "--command=SHOW shared_buffers",
    )  # fmt: skip
    assert shown.strip() == SHARED_BUFFERS


@pytest.mark.anyio
async def test_calls_through_the_pgbouncer_profile(stack: Stack) -> None:
    started = time.monotonic()
    with stack.env_file.open("a") as file:
        file.write("DATABASE_ADDRESS=pgbouncer:6432\nDATABASE_PGBOUNCER=true\n")
    stack.compose("--profile", "pgbouncer", "up", "--detach", "--wait")
    stack.step("PgBouncer profile up, the api replicas through it", started)
    started = time.monotonic()
    await placed_and_ended(stack, range(300, 310))
    env = stack.engine.docker(
        "inspect",
        "--format",
        "{{range .Config.Env}}{{println .}}{{end}}",
        stack.containers("api")[0]["Name"],
    ).stdout
    assert "@pgbouncer:6432/" in env
    assert "DATABASE_PGBOUNCER=true" in env
    (bouncer,) = stack.containers("pgbouncer")
    assert "login attempt: db=exocall user=exocall" in stack.logs(bouncer["Name"])
    stack.step("10 calls through PgBouncer, all ended", started)


def _scale(stack: Stack, replicas: int) -> None:
    """As docs/operations.md says: API_REPLICAS in the env file, and a plain `up`."""
    with stack.env_file.open("a") as file:
        file.write(f"API_REPLICAS={replicas}\n")  # the last assignment wins
    stack.compose("up", "--detach", "--wait")


def _wait_until_running(stack: Stack, container: str, *, since: float) -> None:
    def state() -> list[str]:
        inspected = stack.engine.docker(
            "inspect", "--format", "{{.State.Running}} {{.RestartCount}}", container
        )
        return inspected.stdout.split()

    eventually_sync(
        state,
        what=f"{container} restarted and running (running, restarts)",
        until=lambda state: state[0] == "true" and int(state[1]) > 0,
        within=max(since + 120 - time.monotonic(), 1),
        pause=1,
    )
