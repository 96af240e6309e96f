"""A retried call's price, end to end: `exocall serve` and `exocall simulator`, each a process
of its own. The simulator fills in `Price` in call details a moment after each attempt ends;
reconciliation asks for it and the call shows each attempt's and the total."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest

from app.exotel.simulator import price_of
from tests.conftest import AUTH, FAKE_ACCOUNT_SID, FAKE_API_KEY, FAKE_API_TOKEN
from tests.support.eventually import eventually
from tests.support.processes import Deployment

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]


async def test_a_retried_call_learns_what_each_attempt_cost(deployment: Deployment) -> None:
    deployment.env |= {
        "JOBS_POLL_SECONDS": "0.2",
        "RECONCILE_INTERVAL_SECONDS": "0.5",
        "RECONCILE_PRICE_DELAY_SECONDS": "1",
        "SIMULATOR_PRICE_DELAY_SECONDS": "0.5",
        "SIMULATOR_OUTCOMES": '{"+919052161110": ["busy", "completed"]}',
    }
    simulator_url = deployment.start_simulator("--callback-delay", "0.2")
    api_url = deployment.start_server()
    async with (
        httpx.AsyncClient(base_url=api_url, headers=AUTH, timeout=30) as api,
        httpx.AsyncClient(timeout=30) as http,
    ):
        retry = {"max_attempts": 2, "on": ["busy"], "intervals": [1]}
        body = {"from": "09052161110", "app_id": "926", "retry": retry}
        placed = await api.post("/calls", json=body)
        assert placed.status_code in (201, 202), placed.text

        async def call() -> dict[str, Any]:
            return dict((await api.get(f"/calls/{placed.json()['id']}")).json())

        priced = await eventually(
            call,
            what="both attempts priced",
            until=lambda c: (
                all(a["price"] is not None for a in c["attempts"]) and len(c["attempts"]) == 2
            ),
        )
        log = (await http.get(f"{simulator_url}/_simulator/log")).json()
        sid = priced["attempts"][1]["sid"]
        details = await http.get(
            f"{simulator_url}/v1/Accounts/{FAKE_ACCOUNT_SID}/Calls/{sid}.json",
            auth=(FAKE_API_KEY, FAKE_API_TOKEN),
        )
        charged = details.json()["Call"]["Price"]

    busy, completed = priced["attempts"]
    assert (busy["status"], completed["status"]) == ("busy", "completed")
    assert busy["price"] == float(price_of(0))  # nobody answered: 0 s, nothing charged
    assert completed["price"] == float(charged)  # as Exotel's call details say
    assert priced["status"] == "completed"
    assert Decimal(str(priced["price"])) == Decimal(charged) > 0
    # Asked for in bulk call details, never by dialling again.
    assert sum(1 for e in log if e["path"].endswith("/Calls/connect.json")) == 2
    assert any(e["path"].endswith("/Calls.json") for e in log)
