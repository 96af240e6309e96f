"""The lean multipart parser reads what httpx (and Exotel) send exactly as the general parser
would, and declines anything else."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.api.forms import boundary_of, parse_text_fields

# httpx escapes quotes, backslashes, control characters and `%` in names; Exotel's are plain.
names = st.text(
    alphabet=st.characters(blacklist_characters='"\\%', blacklist_categories=("Cs", "Cc")),
    min_size=1,
    max_size=20,
)
values = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)


def encode(fields: dict[str, str]) -> tuple[bytes, bytes]:
    request = httpx.Request("POST", "http://x", files={k: (None, v) for k, v in fields.items()})
    boundary = boundary_of(request.headers["content-type"])
    assert boundary is not None
    return request.read(), boundary


@given(st.dictionaries(names, values, min_size=1, max_size=8))
def test_text_fields_as_sent_are_read_back(fields: dict[str, str]) -> None:
    body, boundary = encode(fields)
    parsed = parse_text_fields(body, boundary)
    # The general parser takes over whenever this one declines; when it reads, it is right.
    assert parsed is None or parsed == fields
    if not any(c in value for value in fields.values() for c in "\r"):
        assert parsed == fields


def test_exotels_four_fields() -> None:
    fields = {
        "CallSid": "492205107c5fb48f4ac25d1f77759339",
        "Status": "completed",
        "RecordingUrl": "",
        "DateUpdated": "2019-04-08 03:18:35",
    }
    assert parse_text_fields(*encode(fields)) == fields


@pytest.mark.parametrize(
    "body",
    [
        b'--b\r\nContent-Disposition: form-data; name="f"; filename="x.txt"\r\n\r\nx\r\n--b--\r\n',
        b'--b\r\nContent-Disposition: form-data; name="f"\r\nContent-Type: text/csv\r\n\r\nx\r\n'
        b"--b--\r\n",
        b'--b\r\nContent-Disposition: form-data; name="f"\r\n\r\nx\r\n',  # never closed
        b'--b\r\nContent-Disposition: form-data; name="f"\r\n\r\n\xff\xfe\r\n--b--\r\n',
        b"--b\r\nno headers at all\r\n--b--\r\n",
        b'preamble\r\n--b\r\nContent-Disposition: form-data; name="f"\r\n\r\nx\r\n--b--\r\n',
    ],
    ids=["file", "content-type", "unclosed", "not-utf8", "no-headers", "preamble"],
)
def test_anything_else_is_left_to_the_general_parser(body: bytes) -> None:
    assert parse_text_fields(body, b"b") is None


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        ("multipart/form-data; boundary=abc", b"abc"),
        ('multipart/form-data; boundary="a b"', b"a b"),
        ("multipart/form-data", None),
    ],
)
def test_boundary_of(content_type: str, boundary: bytes | None) -> None:
    assert boundary_of(content_type) == boundary
