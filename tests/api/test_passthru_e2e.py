"""Passthru end to end: the simulator runs a confirm/cancel flow, `exocall serve` answers its
Passthru requests (302 by the operator's rule for "cancel"), and a subscriber receives
`call.input` and then the terminal event; each a process of its own, over HTTP."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from app.calls.callback_auth import passthru_url
from tests.conftest import AUTH, FAKE_CALLBACK_SECRET
from tests.support.eventually import eventually
from tests.support.processes import Deployment, free_ports

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

FLOW_APP = "927"  # the simulator's confirm/cancel flow (SIMULATOR_FLOWS' default)


async def test_a_confirm_cancel_flow_end_to_end(deployment: Deployment) -> None:
    deployment.env |= {
        "PASSTHRU_REDIRECT_DIGITS": json.dumps({FLOW_APP: ["2"]}),
        "JOBS_POLL_SECONDS": "0.1",
    }
    (port,) = free_ports(1)
    api_url = f"http://127.0.0.1:{port}"
    simulator_url = deployment.start_simulator(
        "--callback-delay",
        "1",
        "--passthru-url",
        passthru_url(api_url, FAKE_CALLBACK_SECRET.encode()),
    )
    subscriber_url = deployment.start_subscriber()
    deployment.start_server(port=port)
    async with (
        httpx.AsyncClient(base_url=api_url, headers=AUTH, timeout=30) as api,
        httpx.AsyncClient(timeout=30) as http,
    ):
        created = await api.post("/webhook-endpoints", json={"url": f"{subscriber_url}/hook"})
        assert created.status_code == 201, created.text
        # The simulator's Gather keys the second-to-last digit: 1 confirms, 2 cancels.
        calls = {}
        for keyed, number in (("1", "09052161110"), ("2", "09052161120")):
            placed = await api.post("/calls", json={"from": number, "app_id": FLOW_APP})
            assert placed.status_code == 201, placed.text
            calls[keyed] = placed.json()

        async def delivered() -> list[dict[str, Any]]:
            return list((await http.get(f"{subscriber_url}/received")).json())

        def both_ended(received: list[dict[str, Any]]) -> bool:
            return [e["type"] for e in map(_event, received)].count("call.completed") == 2

        received = await eventually(delivered, what="both calls' call.completed", until=both_ended)
        stored = {k: (await api.get(f"/calls/{c['id']}")).json() for k, c in calls.items()}
        log = (await http.get(f"{simulator_url}/_simulator/log")).json()

    for keyed, call in stored.items():
        assert call["status"] == "completed"
        assert call["digits"] == keyed
        assert [step["digits"] for step in call["flow"]] == [keyed]
        pushed = [e for e in map(_event, received) if e["data"]["call"]["id"] == call["id"]]
        types = [e["type"] for e in pushed]
        assert types.index("call.input") < types.index("call.completed")
        (given,) = [e for e in pushed if e["type"] == "call.input"]
        assert given["data"]["call"]["digits"] == keyed
    answered = {e["sid"]: e["status"] for e in log if e["path"] == "/passthru"}
    assert answered == {stored["1"]["sid"]: 200, stored["2"]["sid"]: 302}


def _event(delivery: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(delivery["body"]))
