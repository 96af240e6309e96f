"""`GET /passthru`: a flow's Passthru requests, in the shapes of docs/exotel.md ("Passthru
applet"), stored on their call, its `digits` and `flow`, the `call.input` event, and the 302
rule; on both backends."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from app.calls.callback_auth import passthru_url
from app.exotel.wire import parse_exotel_time
from tests.conftest import FAKE_CALLBACK_SECRET, callback_path, place_body, serving
from tests.support.eventually import eventually
from tests.support.exotel_double import ExotelDouble, accepted, form_of, new_sid
from tests.support.exotel_requests import callback, events, exotel_clock, multipart, place
from tests.support.feed import feed_items
from tests.support.webhooks import app_with

pytestmark = pytest.mark.anyio

PASSTHRU = passthru_url("", FAKE_CALLBACK_SECRET.encode())


def exotel_passthru(sid: str, **fields: str) -> dict[str, str]:
    """The query string of a Passthru request (docs/exotel.md), as Exotel sends it."""
    return {
        "CallSid": sid,
        "From": "09052161110",
        "To": "08030752400",
        "Direction": "outbound-api",
        "CurrentTime": exotel_clock(1),
    } | fields


async def passthru(client: httpx.AsyncClient, fields: dict[str, str]) -> httpx.Response:
    return await client.get(f"{PASSTHRU}&{urlencode(fields)}")


async def call_of(client: httpx.AsyncClient, call_id: str) -> dict[str, Any]:
    return dict((await client.get(f"/calls/{call_id}")).json())


async def test_quoted_digits_are_the_calls_input_and_a_step_of_its_flow(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    call = await place(client, exotel)
    fields = exotel_passthru(call["sid"], digits='"12"')
    response = await passthru(client, fields)
    assert response.status_code == 200, response.text
    assert response.json()["outcome"] == "applied"
    stored = await call_of(client, call["id"])
    assert stored["digits"] == "12"
    (step,) = stored["flow"]
    assert (step["applet"], step["digits"]) == ("passthru", "12")
    # CurrentTime has no zone; Exotel's clock is IST.
    assert datetime.fromisoformat(step["at"]) == parse_exotel_time(fields["CurrentTime"])
    dispatch, request = await events(client, call["id"])
    assert dispatch["kind"] == "dispatch"
    assert request["kind"] == "passthru"
    assert request["method"] == "GET"
    assert request["payload"]["digits"] == '"12"'  # raw, as received


@pytest.mark.parametrize(
    ("given", "digits"),
    [
        ({"digits": '""'}, ""),
        ({}, None),
        ({"digits": '"12*#"'}, "12*#"),
        # No keypad sends these: kept raw with the request, read as nothing keyed.
        ({"digits": '"\uff11"'}, None),  # fullwidth 1
        ({"digits": '"\u0967"'}, None),  # Devanagari 1
        ({"digits": '"1 OR 1=1"'}, None),
        ({"digits": '"' + "1" * 65}, None),  # a quote not closed: not a keypad's either
    ],
)
async def test_empty_digits_are_no_input_and_missing_ones_say_nothing(
    client: httpx.AsyncClient, exotel: ExotelDouble, given: dict[str, str], digits: str | None
) -> None:
    call = await place(client, exotel)
    response = await passthru(client, exotel_passthru(call["sid"], **given))
    assert response.status_code == 200
    stored = await call_of(client, call["id"])
    assert stored["digits"] == digits
    assert [step["digits"] for step in stored["flow"]] == [digits]


async def test_a_replayed_request_is_a_duplicate_and_steps_keep_their_time_order(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    call = await place(client, exotel)
    second = exotel_passthru(call["sid"], digits='"2"', CurrentTime=exotel_clock(60))
    first = exotel_passthru(call["sid"], digits='"1"', CurrentTime=exotel_clock(30))
    assert (await passthru(client, second)).json()["outcome"] == "applied"
    assert (await passthru(client, first)).json()["outcome"] == "applied"  # came late
    assert (await passthru(client, second)).json()["outcome"] == "duplicate"
    stored = await call_of(client, call["id"])
    assert [step["digits"] for step in stored["flow"]] == ["1", "2"]
    assert stored["digits"] == "2"  # the latest keyed, not the latest to arrive
    kinds = [e["kind"] for e in await events(client, call["id"])]
    assert kinds == ["dispatch", "passthru", "passthru", "passthru"]  # every request stored


async def test_a_passthru_for_an_unknown_sid_is_kept_and_attached_once_the_sid_is_known(
    client: httpx.AsyncClient, exotel: ExotelDouble, db_url: str
) -> None:
    sid = new_sid()
    early = await passthru(client, exotel_passthru(sid, digits='"1"', CustomField="order-9"))
    assert early.status_code == 200
    assert early.json()["outcome"] == "unknown_sid"
    call = await place(client, exotel, sid=sid)  # Exotel's answer names the SID
    stored = await call_of(client, call["id"])
    assert stored["digits"] == "1"
    request, dispatch = await events(client, call["id"])  # received before Exotel's answer
    assert (request["kind"], request["outcome"]) == ("passthru", "applied")
    assert (dispatch["kind"], dispatch["outcome"]) == ("dispatch", "applied")
    # Applied with Exotel's answer, in one transaction: under way, then what was keyed.
    feed = await feed_items(client, db_url, call_id=call["id"])
    assert [event["type"] for event in feed] == ["call.in_progress", "call.input"]


async def test_a_passthru_for_an_unknown_sid_is_kept_trimmed_to_exotels_fields(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    sid = new_sid()
    exotels = exotel_passthru(sid, digits='"1"')
    early = await passthru(client, exotels | {"Padding": "x" * 10_000, "Junk": "y" * 3000})
    assert early.json()["outcome"] == "unknown_sid"
    call = await place(client, exotel, sid=sid)
    assert (await call_of(client, call["id"]))["digits"] == "1"
    request, _ = await events(client, call["id"])
    assert (request["kind"], request["outcome"]) == ("passthru", "applied")
    assert request["payload"] == exotels
    # Sent again once the call is known (Exotel repeats a request it had no answer to): the
    # same request, whatever else came with it.
    again = await passthru(client, exotels | {"Padding": "x" * 10_000})
    assert again.json()["outcome"] == "duplicate"
    assert [step["digits"] for step in (await call_of(client, call["id"]))["flow"]] == ["1"]


async def test_our_call_id_in_custom_field_finds_the_call_before_its_sid_is_known(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    """The flow can run before Exotel's answer to `Calls/connect` reaches us."""
    answer, sid = asyncio.Event(), new_sid()

    async def late(_: httpx.Request) -> httpx.Response:
        await answer.wait()
        return accepted(sid)

    exotel.on_connect = late
    call = (await client.post("/calls", json=place_body(), params={"wait": "false"})).json()
    await eventually(lambda: exotel.connects, what="the call sent to Exotel")
    # What exocall gives Exotel as CustomField when the caller gave none: the call's id.
    assert form_of(exotel.connects[-1])["CustomField"] == call["id"]
    response = await passthru(client, exotel_passthru(sid, digits='"1"', CustomField=call["id"]))
    assert response.json()["outcome"] == "applied"
    assert (await call_of(client, call["id"]))["digits"] == "1"
    answer.set()
    stored = await eventually(
        lambda: call_of(client, call["id"]),
        what="the call in progress",
        until=lambda c: c["status"] == "in-progress",
    )
    assert (stored["sid"], stored["status"], stored["digits"]) == (sid, "in-progress", "1")


async def test_each_input_is_a_call_input_event_before_the_terminal_one(
    client: httpx.AsyncClient, exotel: ExotelDouble, db_url: str
) -> None:
    call = await place(client, exotel)
    # Built once: CurrentTime is to the second, and one built a second later is another step.
    keyed = exotel_passthru(call["sid"], digits='"1"')
    await passthru(client, keyed)
    await passthru(client, keyed)  # Exotel repeating it: no event
    ended = await client.post(
        callback_path(call["id"]), **multipart(callback(call["sid"], "completed"))
    )
    assert ended.status_code == 200
    feed = await feed_items(client, db_url, call_id=call["id"])
    kinds = [event["type"] for event in feed]
    assert kinds[-2:] == ["call.input", "call.completed"]
    assert kinds.count("call.input") == 1
    inputs = next(e for e in feed if e["type"] == "call.input")
    assert inputs["data"]["call"]["digits"] == "1"
    sequences = [event["data"]["sequence"] for event in feed]
    assert sequences == sorted(set(sequences))


async def test_a_rule_on_the_digits_answers_302_for_its_app_only(
    db_url: str, exotel: ExotelDouble
) -> None:
    rules = {"926": ["2"], "other-app": ["1"]}
    async with serving(app_with(db_url, exotel, passthru_redirect_digits=rules)) as client:
        call = await place(client, exotel)  # app 926
        cancel = await passthru(client, exotel_passthru(call["sid"], digits='"2"'))
        assert cancel.status_code == 302
        assert cancel.json()["outcome"] == "applied"  # stored all the same
        confirm = await passthru(
            client, exotel_passthru(call["sid"], digits='"1"', CurrentTime=exotel_clock(60))
        )
        assert confirm.status_code == 200
        unknown = await passthru(client, exotel_passthru(new_sid(), digits='"2"'))
        assert unknown.status_code == 200  # no call, no app: the default branch


async def test_a_passthru_is_refused_without_the_token_or_anything_to_match(
    client: httpx.AsyncClient,
) -> None:
    anonymous = await client.get("/passthru", params={"CallSid": new_sid()})
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "callback_unauthenticated"
    forged = await client.get("/passthru", params={"token": "forged", "CallSid": new_sid()})
    assert forged.status_code == 403
    nothing = await passthru(client, {"digits": '"1"'})
    assert nothing.status_code == 422
    assert nothing.json()["error"]["details"][0]["field"] == "CallSid"
    posted = await client.post(PASSTHRU)
    assert posted.status_code == 405
    too_long = await passthru(client, {"CallSid": "x" * 65})
    assert too_long.status_code == 422
    assert too_long.json()["error"]["details"][0]["field"] == "CallSid"


@pytest.mark.parametrize("field", ["From", "To", "CustomField", "Direction", "CurrentTime"])
async def test_a_field_over_its_documented_length_is_refused_naming_it(
    client: httpx.AsyncClient, exotel: ExotelDouble, field: str
) -> None:
    call = await place(client, exotel)
    longest = exotel_passthru(call["sid"], **{field: "9" * 1000})
    assert (await passthru(client, longest)).status_code == 200
    too_long = await passthru(client, exotel_passthru(call["sid"], **{field: "9" * 1001}))
    assert too_long.status_code == 422, too_long.text
    error = too_long.json()["error"]
    assert (error["code"], error["details"][0]["field"]) == ("validation_error", field)
    assert [e["kind"] for e in await events(client, call["id"])] == ["dispatch", "passthru"]


async def test_calls_are_listed_by_what_was_keyed(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    confirmed, cancelled, silent = [await place(client, exotel) for _ in range(3)]
    for call, digits in ((confirmed, '"1"'), (cancelled, '"2"'), (silent, '""')):
        await passthru(client, exotel_passthru(call["sid"], digits=digits))

    async def listed(digits: str) -> list[str]:
        page = await client.get("/calls", params={"digits": digits})
        assert page.status_code == 200
        return [call["id"] for call in page.json()["items"]]

    assert await listed("2") == [cancelled["id"]]
    assert await listed("") == [silent["id"]]
    assert (await client.get("/calls", params={"digits": "9" * 65})).status_code == 422


async def test_a_time_no_clock_can_name_is_when_it_arrived_and_a_repeat_without_one_is_known(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    call = await place(client, exotel)
    year_one = exotel_passthru(call["sid"], digits='"1"', CurrentTime="0001-01-01 00:00:00")
    assert (await passthru(client, year_one)).json()["outcome"] == "applied"
    no_time = exotel_passthru(call["sid"], digits='"2"')
    del no_time["CurrentTime"]
    assert (await passthru(client, no_time)).json()["outcome"] == "applied"
    assert (await passthru(client, no_time)).json()["outcome"] == "duplicate"
    stored = await call_of(client, call["id"])
    assert [step["digits"] for step in stored["flow"]] == ["1", "2"]
    assert not stored["flow"][0]["at"].startswith("0001")
    # The same year in a status callback's DateUpdated: read as none, never a failure.
    fields = callback(call["sid"], "completed", date="0001-01-01 00:00:00")
    ended = await client.post(callback_path(call["id"]), **multipart(fields))
    assert ended.status_code == 200
    assert (await call_of(client, call["id"]))["status"] == "completed"


@pytest.mark.parametrize("far", ["9999-12-31 23:59:59", "1970-01-01 05:30:00"])
async def test_a_time_outside_the_window_is_kept_raw_and_the_step_placed_at_its_arrival(
    client: httpx.AsyncClient, exotel: ExotelDouble, far: str
) -> None:
    """A `CurrentTime` of 9999 would pin the call's digits for good: its step would stay the
    latest whatever came after."""
    call = await place(client, exotel)
    pinned = exotel_passthru(call["sid"], digits='"1"', CurrentTime=far)
    assert (await passthru(client, pinned)).json()["outcome"] == "applied"
    later = exotel_passthru(call["sid"], digits='"2"', CurrentTime=exotel_clock(2))
    assert (await passthru(client, later)).json()["outcome"] == "applied"
    stored = await call_of(client, call["id"])
    assert stored["digits"] == "2"
    assert [step["digits"] for step in stored["flow"]] == ["1", "2"]
    assert not stored["flow"][0]["at"].startswith(far[:4])
    _, kept_raw, _ = await events(client, call["id"])
    assert kept_raw["payload"]["CurrentTime"] == far


async def test_a_callers_own_custom_field_naming_another_call_is_not_taken_for_ours(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    first = await place(client, exotel)
    exotel.answer_connect(accepted(new_sid()))
    follow_up = await client.post("/calls", json=place_body(custom_field=first["id"]))
    second = follow_up.json()
    response = await passthru(
        client, exotel_passthru(second["sid"], digits='"1"', CustomField=first["id"])
    )
    assert response.json()["outcome"] == "applied"
    assert (await call_of(client, second["id"]))["digits"] == "1"
    assert (await call_of(client, first["id"]))["digits"] is None


async def test_status_fields_on_a_passthru_are_kept_raw_and_read_as_nothing(
    client: httpx.AsyncClient, exotel: ExotelDouble
) -> None:
    call = await place(client, exotel)
    odd = exotel_passthru(call["sid"], digits='"' + "1" * 64 + '"', Status="x" * 100)
    response = await passthru(client, odd)
    assert response.status_code == 200, response.text
    _, request = await events(client, call["id"])
    assert (request["status"], request["payload"]["Status"]) == (None, "x" * 100)
    stored = await call_of(client, call["id"])
    assert (stored["status"], stored["digits"]) == ("in-progress", "1" * 64)


async def test_digits_named_for_the_calls_app_opt_the_customer_out_once(
    db_url: str, exotel: ExotelDouble
) -> None:
    rules = {"926": ["9"], "other-app": ["1"]}
    async with serving(app_with(db_url, exotel, passthru_opt_out_digits=rules)) as client:
        call = await place(client, exotel)  # app 926
        number = call["from"]
        keyed_1 = await passthru(client, exotel_passthru(call["sid"], digits='"1"'))
        assert keyed_1.status_code == 200
        assert (await client.get(f"/opt-outs/{number}")).status_code == 404
        fields = exotel_passthru(call["sid"], digits='"9"', CurrentTime=exotel_clock(30))
        assert (await passthru(client, fields)).status_code == 200
        opt_out = (await client.get(f"/opt-outs/{number}")).json()
        assert opt_out["source"] == "passthru"
        assert "9" in opt_out["reason"]
        # Exotel repeating the request changes nothing; the next call to the number is refused.
        assert (await passthru(client, fields)).json()["outcome"] == "duplicate"
        refused = await client.post("/calls", json=place_body(number))
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "number_opted_out"
