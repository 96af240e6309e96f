"""Opaque cursors: a position in a listing, as URL-safe text that only this service reads."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from app.calls.errors import InvalidField


def encode(position: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


def decode(cursor: str, *, field: str, length: int) -> list[Any]:
    """The position `encode` gave out, or a refusal naming `field`."""
    try:
        position = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, RecursionError) as exc:
        raise InvalidField(field, "not a cursor this service gave out") from exc
    if not isinstance(position, list) or len(position) != length:
        raise InvalidField(field, "not a cursor this service gave out")
    return position


def decode_row_ids(cursor: str, *, field: str, length: int) -> list[int]:
    """A position of `length` row ids (PostgreSQL's bigint) that `encode` gave out, or a
    refusal naming `field`: JSON's `true` is no id, nor is a number the column cannot hold."""
    position = decode(cursor, field=field, length=length)
    if not all(
        isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
        for value in position
    ):
        raise InvalidField(field, "not a cursor this service gave out")
    return position
