"""A TCP proxy in front of PostgreSQL, for tests that need the database to go away and come back
without stopping the server everyone else uses.

Plain threads and blocking sockets: one thread accepts, two copy each connection's bytes (one
per direction). `cut()` and `restore()` return once done: after `cut()` nothing listens on the
port, every connection made through it is closed both ways and every thread of the proxy has
ended; after `restore()` new connections reach the database again.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from sqlalchemy.engine import make_url

from tests.support.processes import free_ports

_ACCEPT_POLL_SECONDS = 0.05  # how soon the accepting thread notices a cut
_CONNECT_TIMEOUT_SECONDS = 5.0
_JOIN_TIMEOUT_SECONDS = 10.0
_CHUNK = 65536


class PgProxy:
    """Listens on a loopback port (chosen at `start()`, kept by `restore()`) and forwards every
    connection to `upstream_host:upstream_port`. A context manager, or `start()` then `stop()`."""

    def __init__(self, upstream_port: int = 5432, upstream_host: str = "127.0.0.1") -> None:
        self.port = 0  # known once started
        self._upstream = (upstream_host, upstream_port)
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        # Bumped by every cut: whatever was accepted or connected before it is not forwarded.
        self._generation = 0
        self._sockets: set[socket.socket] = set()  # both ends of every open connection
        self._threads: set[threading.Thread] = set()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def url_for(self, database_url: str) -> str:
        """`database_url`, reached through the proxy."""
        url = make_url(database_url).set(host="127.0.0.1", port=self.port)
        return url.render_as_string(hide_password=False)

    @property
    def alive(self) -> bool:
        """Whether any thread of the proxy still runs."""
        with self._lock:
            return any(thread.is_alive() for thread in self._threads)

    def start(self) -> None:
        self.restore()

    def restore(self) -> None:
        """Listen (again, on the same port): the database is reachable through the proxy."""
        with self._lock:
            if self._listener is not None:
                return
            # A port of the tests' own (free_ports): after a cut, no outgoing connection of
            # anyone's can take it before the restore binds it again.
            self.port = self.port or free_ports(1)[0]
            listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR on POSIX
            listener.settimeout(_ACCEPT_POLL_SECONDS)
            self._listener = listener
            self._spawn("accept", self._accept, listener, self._generation)

    def cut(self) -> None:
        """Stop listening and close every connection, both ways: the database looks down."""
        with self._lock:
            self._generation += 1
            self._listener = None  # its thread closes it, at its next poll
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the threads blocked on it
            threads = list(self._threads)
        for thread in threads:
            thread.join(_JOIN_TIMEOUT_SECONDS)
        if any(thread.is_alive() for thread in threads):
            raise RuntimeError("a thread of the proxy did not end")

    def stop(self) -> None:
        """Cut, for good. Idempotent."""
        self.cut()

    def _spawn(self, name: str, target: Callable[..., None], *args: object) -> None:
        # Called with the lock held.
        thread = threading.Thread(
            target=self._run, args=(target, *args), name=f"pg-proxy-{name}", daemon=True
        )
        self._threads.add(thread)
        thread.start()

    def _run(self, target: Callable[..., None], *args: object) -> None:
        try:
            target(*args)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _accept(self, listener: socket.socket, generation: int) -> None:
        with listener:
            while True:
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    client = None
                with self._lock:
                    if generation != self._generation:
                        if client is not None:
                            client.close()
                        return  # cut: the listener is closed on the way out
                    if client is not None:
                        client.settimeout(None)
                        self._sockets.add(client)
                        self._spawn("connection", self._connect, client, generation)

    def _connect(self, client: socket.socket, generation: int) -> None:
        try:
            upstream = socket.create_connection(self._upstream, _CONNECT_TIMEOUT_SECONDS)
        except OSError:  # the database itself refused: so does the proxy
            self._close(client)
            return
        upstream.settimeout(None)
        link = _Link(client, upstream)
        with self._lock:
            if generation != self._generation:  # cut while connecting upstream
                upstream.close()
                cut = True
            else:
                self._sockets.add(upstream)
                self._spawn("downstream", self._pipe, link, upstream, client)
                cut = False
        if cut:
            self._close(client)
            return
        self._pipe(link, client, upstream)

    def _pipe(self, link: _Link, source: socket.socket, target: socket.socket) -> None:
        """Copy until either end closes or is cut; then shut both down, which ends the other
        direction too. The second of the two to end closes the sockets: no thread is still
        using them then."""
        with contextlib.suppress(OSError):
            while data := source.recv(_CHUNK):
                target.sendall(data)
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            link.pipes -= 1
            last = link.pipes == 0
        if last:
            self._close(link.client, link.upstream)

    def _close(self, *sockets: socket.socket) -> None:
        with self._lock:
            for sock in sockets:
                self._sockets.discard(sock)
                sock.close()


@dataclass
class _Link:
    """One connection through the proxy."""

    client: socket.socket
    upstream: socket.socket
    pipes: int = 2  # threads still copying, one per direction
