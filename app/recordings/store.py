"""Where archived recordings are kept: a local directory (the default, so that `make run` keeps
them with no setup) or an S3-compatible bucket (S3, R2, MinIO, GCS's interoperability API).

Both go through obstore (docs/recordings.md says why): one interface for the two, uploads
streamed from a file in bounded multipart chunks, ranged reads streamed in chunks, and presigned
URLs for S3. A recording's key is its call's id.

One exception, measured (bench/recordings.py): obstore's directory store reads a whole file into
memory to put it, 22 MiB more for a 50 MiB recording. A recording goes into a directory by a copy
the kernel makes (`shutil.copyfile`), then a rename, never whole in memory.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import obstore
from obstore.store import LocalStore, S3Store

from app.config import RecordingSettings

# An upload holds at most this many parts of this size in memory, whatever the recording's size.
_PART_BYTES = 5 * 1024 * 1024
_PARTS_IN_FLIGHT = 2
_READ_CHUNK = 256 * 1024


class StoreUnavailable(Exception):
    """The store could not be reached, or refused the request: try again later."""


@dataclass(frozen=True)
class ByteRange:
    """Bytes `start` to `end`, both included."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class RecordingStore:
    def __init__(
        self, store: LocalStore | S3Store, *, describe: str, root: Path | None = None
    ) -> None:
        self._store = store
        self._describe = describe
        self._root = root  # a directory store's

    def __repr__(self) -> str:
        return f"RecordingStore({self._describe})"

    @classmethod
    def from_settings(cls, settings: RecordingSettings) -> RecordingStore:
        """RECORDING_STORE: a directory, or `s3://bucket/prefix` with RECORDING_S3_*."""
        where = settings.store
        if not where.startswith("s3://"):
            root = Path(where).resolve()
            root.mkdir(parents=True, exist_ok=True)
            return cls(LocalStore(root), describe=str(root), root=root)
        bucket, _, prefix = where.removeprefix("s3://").partition("/")
        options: dict[str, Any] = {"region": settings.s3_region}
        if settings.s3_endpoint:
            options["endpoint"] = settings.s3_endpoint
        if settings.s3_access_key_id and settings.s3_secret_access_key:
            options["access_key_id"] = settings.s3_access_key_id
            secret = settings.s3_secret_access_key.get_secret_value()
            options["secret_access_key"] = secret
        endpoint = settings.s3_endpoint or ""
        store = S3Store(
            bucket,
            prefix=prefix.strip("/") or None,
            client_options={
                "allow_http": endpoint.startswith("http://"),
                "connect_timeout": "5s",
                "timeout": "60s",
            },
            # The archive retries on its own schedule: a store that is down fails fast here.
            retry_config={"max_retries": 2, "retry_timeout": timedelta(seconds=20)},
            **options,
        )
        return cls(store, describe=where)

    @property
    def signs(self) -> bool:
        """Whether the store offers presigned URLs."""
        return isinstance(self._store, S3Store)

    async def put(self, call_id: uuid.UUID, path: Path, *, content_type: str) -> None:
        """Store the file at `path` as the call's recording, streamed from the file."""
        if self._root is not None:
            try:
                await asyncio.to_thread(_copy_into, path, self._root / str(call_id))
            except OSError as exc:
                raise StoreUnavailable(f"{self._root}: {exc.strerror or exc}") from exc
            return
        try:
            await obstore.put_async(
                self._store,
                str(call_id),
                path,
                attributes={"Content-Type": content_type},
                chunk_size=_PART_BYTES,
                max_concurrency=_PARTS_IN_FLIGHT,
            )
        except Exception as exc:  # obstore's errors, and the OS's for a directory
            raise StoreUnavailable(_first_line(exc)) from exc

    async def read(self, call_id: uuid.UUID, span: ByteRange) -> AsyncIterator[bytes]:
        """The bytes of `span` of the call's recording, in chunks. Opens the object before it
        returns, so that a store that is down fails here, before any answer has started."""
        try:
            result = await obstore.get_async(
                self._store, str(call_id), options={"range": (span.start, span.end + 1)}
            )
        except Exception as exc:
            raise StoreUnavailable(_first_line(exc)) from exc
        return _chunks(result.stream(min_chunk_size=_READ_CHUNK))

    async def sign(self, call_id: uuid.UUID, *, seconds: int) -> str:
        """A URL that serves the call's recording for `seconds` (an S3 store: see `signs`)."""
        assert isinstance(self._store, S3Store), "only an S3 store signs"
        try:
            return await obstore.sign_async(
                self._store, "GET", str(call_id), timedelta(seconds=seconds)
            )
        except Exception as exc:
            raise StoreUnavailable(_first_line(exc)) from exc

    async def delete(self, call_id: uuid.UUID) -> None:
        """Delete the call's recording; one already gone is deleted."""
        try:
            await obstore.delete_async(self._store, str(call_id))
        except FileNotFoundError:
            return
        except Exception as exc:
            raise StoreUnavailable(_first_line(exc)) from exc


def _copy_into(source: Path, target: Path) -> None:
    """Copy `source` to `target`, whole or not at all, and durably."""
    part = target.with_name(f".{target.name}.part")
    try:
        shutil.copyfile(source, part)
        with part.open("rb") as copied:
            os.fsync(copied.fileno())
        part.replace(target)
    finally:
        part.unlink(missing_ok=True)


async def _chunks(stream: Any) -> AsyncIterator[bytes]:
    async for chunk in stream:
        yield bytes(chunk)


def _first_line(exc: BaseException) -> str:
    # obstore's messages go on with a debug dump of the request: the first line says it.
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
