"""`/opt-outs`: through the app, on the real migrated database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api.opt_out_schemas import MAX_REASON
from app.calls import cursors
from app.db.models import OptOut
from app.db.statements import table_of

pytestmark = pytest.mark.anyio

NUMBER = "+919052161119"
# Each spelling `POST /calls` takes, as a path segment: `+` as is or encoded.
SPELLINGS = ["+919052161119", "%2B919052161119", "09052161119", "9052161119", "919052161119"]


async def test_a_number_is_opted_out_201_and_again_200_keeping_the_first_reason(
    client: httpx.AsyncClient,
) -> None:
    first = await client.post("/opt-outs", json={"number": "090521 61119", "reason": "asked"})
    again = await client.post("/opt-outs", json={"number": NUMBER, "reason": "asked twice"})

    assert first.status_code == 201, first.text
    created = first.json()
    assert created == {
        "number": NUMBER,
        "reason": "asked",
        "source": "api",
        "created_at": created["created_at"],
    }
    assert datetime.fromisoformat(created["created_at"]).tzinfo is not None
    assert (again.status_code, again.json()) == (200, created)


async def test_a_reason_is_optional_and_a_blank_one_is_none(client: httpx.AsyncClient) -> None:
    bare = await client.post("/opt-outs", json={"number": "+919052161110"})
    blank = await client.post("/opt-outs", json={"number": "+919052161111", "reason": "  "})

    assert (bare.status_code, bare.json()["reason"]) == (201, None)
    assert (blank.status_code, blank.json()["reason"]) == (201, None)


@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_every_spelling_of_a_number_in_the_path_is_the_same_number(
    client: httpx.AsyncClient, spelling: str
) -> None:
    created = await client.post("/opt-outs", json={"number": NUMBER})
    assert created.status_code == 201, created.text

    found = await client.get(f"/opt-outs/{spelling}")
    assert (found.status_code, found.json()) == (200, created.json())

    assert (await client.delete(f"/opt-outs/{spelling}")).status_code == 204
    assert (await client.get(f"/opt-outs/{NUMBER}")).status_code == 404


@pytest.mark.parametrize("spelling", ["+91 90521 61119", "9052161119", "919052161119"])
async def test_every_spelling_in_the_body_is_stored_in_e164(
    client: httpx.AsyncClient, spelling: str
) -> None:
    response = await client.post("/opt-outs", json={"number": spelling})
    assert (response.status_code, response.json()["number"]) == (201, NUMBER)


async def test_a_removed_number_is_gone_and_removing_it_again_is_404(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/opt-outs", json={"number": NUMBER, "reason": "asked"})

    removed = await client.delete(f"/opt-outs/{NUMBER}")
    again = await client.delete(f"/opt-outs/{NUMBER}")

    assert (removed.status_code, removed.content) == (204, b"")
    assert again.status_code == 404
    assert again.json()["error"] == {
        "code": "opt_out_not_found",
        "message": f"{NUMBER} is not opted out",
    }
    assert (await client.get("/opt-outs")).json() == {"items": [], "next_cursor": None}
    # Opted out afresh: a new entry, with the new reason.
    renewed = await client.post("/opt-outs", json={"number": NUMBER, "reason": "asked again"})
    assert (renewed.status_code, renewed.json()["reason"]) == (201, "asked again")


async def test_a_number_never_opted_out_is_404_in_the_one_shape(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/opt-outs/09052161119")

    assert response.status_code == 404
    assert response.json() == {
        "error": {"code": "opt_out_not_found", "message": f"{NUMBER} is not opted out"}
    }


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/opt-outs", {"number": "12345"}),
        ("POST", "/opt-outs", {"number": "+9190521611199"}),
        ("POST", "/opt-outs", {"number": "9052\x0061119"}),
        ("POST", "/opt-outs", {"number": 9052161119}),
        ("POST", "/opt-outs", {}),
        ("GET", "/opt-outs/12345", None),
        ("GET", "/opt-outs/9052%0061119", None),
        ("GET", "/opt-outs/not-a-number", None),
        ("DELETE", "/opt-outs/%2B0000", None),
    ],
)
async def test_a_bad_number_is_422_naming_the_field(
    client: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None
) -> None:
    response = await client.request(method, path, json=body)

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert [detail["field"] for detail in error["details"]] == ["number"]


@pytest.mark.parametrize(
    ("reason", "field"),
    [
        ("x" * (MAX_REASON + 1), "reason"),
        ("nul \x00 inside", "reason"),
        (12, "reason"),
    ],
)
async def test_a_reason_too_long_or_with_a_nul_is_422_naming_it(
    client: httpx.AsyncClient, reason: Any, field: str
) -> None:
    response = await client.post("/opt-outs", json={"number": NUMBER, "reason": reason})

    assert response.status_code == 422, response.text
    assert [detail["field"] for detail in response.json()["error"]["details"]] == [field]
    assert (await client.get(f"/opt-outs/{NUMBER}")).status_code == 404


async def test_an_unknown_field_is_refused_by_name(client: httpx.AsyncClient) -> None:
    response = await client.post("/opt-outs", json={"number": NUMBER, "source": "passthru"})

    assert response.status_code == 422
    assert [d["field"] for d in response.json()["error"]["details"]] == ["source"]


async def test_a_body_that_is_not_json_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post("/opt-outs", data={"number": NUMBER})
    assert response.status_code == 415


async def test_the_list_is_newest_first_in_cursor_pages_ties_by_number(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    # Three at one instant (a tie the cursor must step through), two before, two after.
    at = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
    times = [at - timedelta(minutes=2), at - timedelta(minutes=1), at, at, at]
    times += [at + timedelta(minutes=1), at + timedelta(minutes=2)]
    numbers = [f"+91905216111{n}" for n in range(len(times))]
    rows = [
        {"number": number, "reason": None, "source": "api", "created_at": created_at}
        for number, created_at in zip(numbers, times, strict=True)
    ]
    async with engine.begin() as connection:
        await connection.execute(table_of(OptOut).insert(), rows)

    seen: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        response = await client.get("/opt-outs", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 2
        seen += [item["number"] for item in page["items"]]
        pages += 1
        if (cursor := page["next_cursor"]) is None:
            break

    newest_first = sorted(zip(times, numbers, strict=True), reverse=True)
    assert seen == [number for _, number in newest_first]
    assert pages == 4


async def test_one_page_holds_everything_when_it_fits(client: httpx.AsyncClient) -> None:
    for number in ("+919052161110", "+919052161111"):
        await client.post("/opt-outs", json={"number": number})

    page = (await client.get("/opt-outs", params={"limit": 2})).json()

    assert [item["number"] for item in page["items"]] == ["+919052161111", "+919052161110"]
    assert page["next_cursor"] is None


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": cursors.encode(["2026-12-05T10:00:00", NUMBER])}, "cursor"),  # no offset
        ({"cursor": cursors.encode(["2026-12-05T10:00:00+00:00", "0\x00"])}, "cursor"),
        ({"cursor": cursors.encode(["0001-01-01T00:00:00+05:30", NUMBER])}, "cursor"),
        ({"cursor": cursors.encode([1, NUMBER])}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
    ],
)
async def test_a_bad_cursor_or_limit_is_422_naming_it(
    client: httpx.AsyncClient, params: dict[str, Any], field: str
) -> None:
    response = await client.get("/opt-outs", params=params)

    assert response.status_code == 422, response.text
    assert [d["field"] for d in response.json()["error"]["details"]] == [field]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/opt-outs"),
        ("GET", "/opt-outs"),
        ("GET", f"/opt-outs/{NUMBER}"),
        ("DELETE", f"/opt-outs/{NUMBER}"),
    ],
)
async def test_the_api_key_is_required(client: httpx.AsyncClient, method: str, path: str) -> None:
    await client.post("/opt-outs", json={"number": NUMBER})
    key = client.headers.pop("Authorization")

    response = await client.request(method, path, json={"number": "+919052161110"})

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"
    client.headers["Authorization"] = key
    listed = (await client.get("/opt-outs")).json()["items"]
    assert [item["number"] for item in listed] == [NUMBER]  # nothing added, nothing removed
