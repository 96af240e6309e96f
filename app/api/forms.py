"""A lean parser for the small multipart forms Exotel sends (a handful of text fields).

Exotel posts status callbacks as multipart/form-data by default; python-multipart parses any
form, streaming, at a cost that dominates a callback's handling. This reads the common case in
one pass over the body and gives up (None) on anything else, for the general parser to take.
"""

from __future__ import annotations

import re

_DISPOSITION = re.compile(rb'form-data; name="([^"\\]*)"', re.IGNORECASE)
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)


def boundary_of(content_type: str) -> bytes | None:
    match = _BOUNDARY.search(content_type)
    return match[1].encode("latin-1", "replace") if match else None


def parse_text_fields(body: bytes, boundary: bytes) -> dict[str, str] | None:
    """The fields of a multipart body made only of plain text fields, or None if it holds
    anything else (files, other headers, odd framing, bytes that are not UTF-8)."""
    delimiter = b"--" + boundary
    parts = body.split(delimiter)
    # ["", "\r\n<part>\r\n", ..., "--\r\n"]: nothing before the first delimiter, a closing one.
    if len(parts) < 2 or parts[0] not in (b"", b"\r\n") or parts[-1].rstrip() != b"--":
        return None
    fields: dict[str, str] = {}
    for part in parts[1:-1]:
        if not (part.startswith(b"\r\n") and part.endswith(b"\r\n")):
            return None
        head, separator, value = part[2:-2].partition(b"\r\n\r\n")
        name = _DISPOSITION.fullmatch(head.split(b":", 1)[-1].strip()) if separator else None
        if name is None or b"\r\n" in head or not head.lower().startswith(b"content-disposition:"):
            return None
        try:
            fields[name[1].decode()] = value.decode()
        except UnicodeDecodeError:
            return None
    return fields
