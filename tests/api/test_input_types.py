"""Numbers and times as the schema types them: digits are ASCII `0`-`9`, an integer is an
integer, a date-time is an ISO 8601 date-time. Anything else in a request is refused 422 in the
one error shape, naming the field, and stores nothing. (In a status callback, which is kept
whatever it holds, such a value is read as absent: tests/api/test_status_callbacks.py.)"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.calls import cursors
from tests.conftest import place_body
from tests.support.exotel_double import ExotelDouble

pytestmark = pytest.mark.anyio

# 9052161110 in Devanagari and in fullwidth digits, which Python's `\d` and int() read.
DEVANAGARI = "९०५२१६१११०"
FULLWIDTH = "".join(chr(0xFF10 + int(d)) for d in "9052161110")
ARABIC_INDIC = "".join(chr(0x0660 + int(d)) for d in "926")


def refused(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert field in [d["field"] for d in error["details"]], error


async def stored_calls(client: httpx.AsyncClient) -> list[Any]:
    return list((await client.get("/calls")).json()["items"])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("from", DEVANAGARI),
        ("from", "9" + DEVANAGARI[1:]),  # an ASCII 9, then Devanagari
        ("from", FULLWIDTH),
        ("from", "+91" + FULLWIDTH),
        ("caller_id", "0" + FULLWIDTH),
        ("caller_id", "0" + DEVANAGARI),
        ("app_id", ARABIC_INDIC),
        ("app_id", "９２６"),  # noqa: RUF001
        ("time_limit", "1_000"),
        ("time_limit", True),
        ("time_out", "３０"),  # noqa: RUF001
        ("time_out", False),
        ("time_limit", "300"),  # JSON's integers are numbers, not text
    ],
)
async def test_a_number_not_in_ascii_digits_is_refused_naming_it(
    client: httpx.AsyncClient, exotel: ExotelDouble, field: str, value: Any
) -> None:
    body = place_body() | {field: value}
    refused(await client.post("/calls", json=body), field)
    refused(await client.post("/calls/batch", json={"calls": [body]}), f"calls.0.{field}")
    assert await stored_calls(client) == []
    assert exotel.requests == []


async def test_numbers_in_ascii_digits_and_json_integers_are_taken(
    client: httpx.AsyncClient,
) -> None:
    body = place_body("090-5216-1110", caller_id="+918030752400", app_id=926, time_limit=300)
    response = await client.post("/calls", json=body | {"time_out": 30.0}, params={"wait": "false"})
    assert response.status_code == 202, response.text
    call = response.json()
    assert (call["from"], call["app_id"], call["time_limit"], call["time_out"]) == (
        "+919052161110",
        "926",
        300,
        30,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("created_before", "0.5"),
        ("created_before", "0"),
        ("created_after", "1700000000"),
        ("created_after", "2026-12-05"),  # a date, not a date-time
        ("created_after", "2026-12-05T10:00:00"),  # no offset: ambiguous
        ("limit", "1_0"),
        ("limit", "５"),  # noqa: RUF001
        ("limit", "true"),
        ("from", DEVANAGARI),
    ],
)
async def test_a_listing_filter_of_the_wrong_type_is_refused_naming_it(
    client: httpx.AsyncClient, name: str, value: str
) -> None:
    refused(await client.get("/calls", params={name: value}), name)


async def test_a_listing_filter_in_iso_8601_is_taken(client: httpx.AsyncClient) -> None:
    for value in ("2026-12-05T10:00:00Z", "2026-12-05T15:30:00+05:30", "2026-12-05 10:00:00Z"):
        response = await client.get("/calls", params={"created_before": value, "limit": "5"})
        assert response.status_code == 200, (value, response.text)


async def test_every_limit_is_read_in_ascii_digits(client: httpx.AsyncClient) -> None:
    created = await client.post("/webhook-endpoints", json={"url": "http://127.0.0.1:9/hook"})
    for path in ("/events", f"/webhook-endpoints/{created.json()['id']}/attempts"):
        refused(await client.get(path, params={"limit": "1_0"}), "limit")
        assert (await client.get(path, params={"limit": "10"})).status_code == 200


@pytest.mark.parametrize("since", [0, 0.5, "0", "1700000000", True, "2026-12-05"])
async def test_recover_since_must_be_a_date_time(client: httpx.AsyncClient, since: Any) -> None:
    created = await client.post("/webhook-endpoints", json={"url": "http://127.0.0.1:9/hook"})
    assert created.status_code == 201, created.text
    endpoint = created.json()["id"]
    url = f"/webhook-endpoints/{endpoint}/recover"
    refused(await client.post(url, json={"since": since}), "since")
    taken = await client.post(url, json={"since": "2026-12-05T10:00:00+05:30"})
    assert taken.status_code == 202, taken.text


@pytest.mark.parametrize("position", [[10**30, 0], [True, 0], [-(2**63) - 1, 1]])
async def test_a_cursor_whose_ids_no_column_holds_is_refused(
    client: httpx.AsyncClient, position: list[Any]
) -> None:
    refused(await client.get("/events", params={"after": cursors.encode(position)}), "after")
    created = await client.post("/webhook-endpoints", json={"url": "http://127.0.0.1:9/hook"})
    attempts = f"/webhook-endpoints/{created.json()['id']}/attempts"
    refused(await client.get(attempts, params={"cursor": cursors.encode(position[:1])}), "cursor")
