"""Real processes for end-to-end tests: start one, wait until it answers over HTTP, stop it.

Everything a process writes goes to a log file, so a test can show it when something fails.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.config import variables
from tests.support.eventually import NotInTime, eventually_sync

# A process ready in 3 s on an idle machine took 18 s on a loaded one.
READY_DEADLINE_SECONDS = 60.0
STOP_DEADLINE_SECONDS = 10.0
_POLL_INTERVAL_SECONDS = 0.05


class ProcessNotReady(RuntimeError):
    """The process exited, or did not answer its readiness URL with 200, before the deadline."""


# Ports are picked below the kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768-60999
# by default), where a bind to port 0 and every outgoing connection take theirs: a port found free
# there can be taken by anyone's next connection before the process told to use it binds it.
# Below it, only a process given the number binds it. Each pytest-xdist worker picks from a block
# of its own, so that two workers never hand out one port, and goes round its block from a random
# place, so that a port is not handed out again soon, nor in the same order by another run.
_PORTS_FROM = 20000
_PORTS_PER_WORKER = 500
_ports_lock = threading.Lock()


@functools.cache  # one round for the process
def _worker_ports() -> Iterator[int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # gw0, gw1, ...; unset without xdist
    first = _PORTS_FROM + int(worker.removeprefix("gw")) * _PORTS_PER_WORKER
    start = random.randrange(_PORTS_PER_WORKER)
    return (first + (start + n) % _PORTS_PER_WORKER for n in itertools.count())


def _bindable(port: int) -> bool:
    """Nothing listens on `port` (a closed connection's TIME_WAIT does not count: the servers
    started here bind with SO_REUSEADDR, as the check does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """Loopback ports that nothing listens on, each handed out once in a while by this process
    and by no other worker of the test run."""
    with _ports_lock:
        ports: list[int] = []
        for _ in range(_PORTS_PER_WORKER):
            port = next(_worker_ports())
            if _bindable(port):
                ports.append(port)
                if len(ports) == count:
                    return ports
    raise RuntimeError(f"fewer than {count} free ports in this worker's block")


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM (a graceful shutdown), then SIGKILL if it is not gone within the bound."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_DEADLINE_SECONDS)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start_process(
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log_path: Path,
    ready_url: str,
    deadline_seconds: float = READY_DEADLINE_SECONDS,
) -> Process:
    """Start `argv` and return once `ready_url` answers 200. On failure the process is stopped
    and the error carries its output."""
    with log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
        popen = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    process = Process(name, popen, log_path)
    try:
        _wait_until_ready(process, ready_url, deadline_seconds)
    except BaseException:
        process.stop()
        raise
    return process


# Run by the child before it becomes the command: SIGINT back to its default.
_EXEC_WITH_DEFAULT_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


def with_default_sigint(argv: Sequence[str]) -> list[str]:
    """`argv`, to be run with SIGINT at its default, as from a terminal, by a test that sends it.

    A shell without job control starts a background job (`pytest ... &`) with SIGINT ignored,
    and children inherit that. A command keeps an inherited SIG_IGN, as Unix commands should
    (Python then installs no KeyboardInterrupt handler), so it would never see the test's Ctrl-C.
    """
    return [sys.executable, "-c", _EXEC_WITH_DEFAULT_SIGINT, *argv]


def _wait_until_ready(process: Process, url: str, deadline_seconds: float) -> None:
    with httpx.Client(timeout=1.0) as http:

        def ready() -> str:
            """'ready', or what the URL answered instead."""
            if (code := process.popen.poll()) is not None:
                raise ProcessNotReady(
                    f"{process.name} exited with {code} before it was ready:\n{process.output()}"
                )
            try:
                response = http.get(url)
            except httpx.TransportError as exc:
                return repr(exc)
            if response.status_code == httpx.codes.OK:
                return "ready"
            return f"{response.status_code} {response.text}"

        try:
            eventually_sync(
                ready,
                what=f"{process.name} ready at {url}",
                until=lambda answer: answer == "ready",
                within=deadline_seconds,
                pause=_POLL_INTERVAL_SECONDS,
            )
        except NotInTime as exc:
            raise ProcessNotReady(f"{exc}:\n{process.output()}") from None


EXOCALL = str(Path(sys.executable).parent / "exocall")
# The service's settings, which the processes must not inherit from a developer's shell.
STRAY_ENV = tuple(variables())


class Deployment:
    """exocall as users run it: the simulator and one or more `exocall serve` replicas on
    loopback ports, sharing one database. Stop it to stop them all."""

    def __init__(self, *, database_url: str, workdir: Path, env: Mapping[str, str]) -> None:
        self.database_url = database_url
        self.workdir = workdir  # outside the repository, so no `.env` there is read
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(STRAY_ENV)} | {
            "DATABASE_URL": database_url,
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.processes: list[Process] = []
        self.simulator_url = ""

    def start_simulator(self, *options: str) -> str:
        (port,) = free_ports(1)
        self.simulator_url = f"http://127.0.0.1:{port}"
        self.env["EXOTEL_API_BASE_URL"] = self.simulator_url
        argv = [EXOCALL, "simulator", "--host", "127.0.0.1", "--port", str(port), *options]
        self._start("simulator", argv, f"{self.simulator_url}/_simulator/log")
        return self.simulator_url

    def start_subscriber(self) -> str:
        """A webhook subscriber (tests/support/subscriber.py); its base URL."""
        (port,) = free_ports(1)
        url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "tests.support.subscriber", "--port", str(port)]
        root = str(Path(__file__).resolve().parents[2])
        self._start("subscriber", argv, f"{url}/received", PYTHONPATH=root)
        return url

    def start_server(self, *, ready_path: str = "/readyz", port: int | None = None) -> str:
        """A replica; ready once `ready_path` answers 200 (`/healthz` with the database down)."""
        port = port or free_ports(1)[0]
        url = f"http://127.0.0.1:{port}"
        argv = [EXOCALL, "serve", "--host", "127.0.0.1", "--port", str(port)]
        self._start(f"server-{len(self.processes)}", argv, url + ready_path, PUBLIC_BASE_URL=url)
        return url

    def start_deliverer(self) -> str:
        """`exocall deliver`; the base URL of its /healthz and /metrics."""
        (port,) = free_ports(1)
        url = f"http://127.0.0.1:{port}"
        argv = [EXOCALL, "deliver", "--host", "127.0.0.1", "--port", str(port)]
        self._start(f"deliverer-{len(self.processes)}", argv, url + "/healthz")
        return url

    def _start(self, name: str, argv: list[str], ready_url: str, **env: str) -> None:
        self.processes.append(
            start_process(
                name,
                argv,
                env=self.env | env,
                cwd=self.workdir,
                log_path=self.workdir / f"{name}.log",
                ready_url=ready_url,
            )
        )

    def stop(self) -> None:
        with contextlib.ExitStack() as stack:  # every process is stopped even if one fails to
            for process in self.processes:
                stack.callback(process.stop)

    def outputs(self) -> str:
        return "".join(
            f"\n----- {p.name} output ({p.log_path}) -----\n{p.output()}" for p in self.processes
        )
