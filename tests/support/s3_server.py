"""A real S3 API on loopback: moto in server mode, started by the tests
(tests/recordings/test_recordings.py).

Every test gets a bucket of its own; `PgProxy` (any TCP will do) in front of it makes a store
that can go down and come back."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.support.processes import Process, free_ports, start_process

FAKE_S3_KEY_ID = "fake-s3-key-id"
FAKE_S3_SECRET = "fake-s3-secret"


def start_moto(workdir: Path) -> tuple[Process, str]:
    """moto's server on a free loopback port; it and its endpoint URL."""
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = start_process(
        "moto",
        argv,
        env=dict(os.environ),
        cwd=workdir,
        log_path=workdir / "moto.log",
        ready_url=url + "/moto-api/",
    )
    return process, url


def new_bucket(endpoint: str) -> str:
    """A bucket of its own for a test."""
    bucket = f"recordings-{uuid.uuid4().hex[:12]}"
    httpx.put(f"{endpoint}/{bucket}").raise_for_status()
    return bucket


def objects(endpoint: str, bucket: str) -> Iterator[str]:
    """The keys in the bucket (moto answers unsigned requests)."""
    listing = httpx.get(f"{endpoint}/{bucket}?list-type=2").text
    for part in listing.split("<Key>")[1:]:
        yield part.partition("</Key>")[0]
