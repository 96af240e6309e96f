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
