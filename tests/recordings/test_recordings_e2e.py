"""Recordings end to end: the simulator and `exocall serve`, each a process of its own, over HTTP.
A completed call's recording is fetched with the Exotel credentials, kept in a directory, and
served (whole and by range) as the simulator served it; a 500 on the way is tried again."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest

from tests.conftest import AUTH, FAKE_API_KEY, FAKE_API_TOKEN
from tests.support.eventually import eventually
from tests.support.processes import Deployment

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]


async def wait_for_recording(api: httpx.AsyncClient, call_id: str, status: str) -> dict[str, Any]:
    async def call() -> dict[str, Any]:
        return dict((await api.get(f"/calls/{call_id}")).json())

    return await eventually(
        call,
        what=f"call {call_id}'s recording {status}",
        until=lambda c: (c.get("recording") or {}).get("status") == status,
    )


async def test_a_recording_is_fetched_kept_and_served_as_exotel_served_it(
    deployment: Deployment,
) -> None:
    deployment.env |= {"JOBS_POLL_SECONDS": "0.2"}
    simulator_url = deployment.start_simulator("--callback-delay", "0.2")
    api_url = deployment.start_server()
    async with (
        httpx.AsyncClient(base_url=api_url, headers=AUTH, timeout=30) as api,
        httpx.AsyncClient(timeout=30) as http,
    ):
        # The first fetch of a recording answers 500: the archive tries it again.
        fault = await http.post(
            f"{simulator_url}/_simulator/recording-faults", json={"status": 500}
        )
        assert fault.status_code == 200
        placed = await api.post("/calls", json={"from": "09052161110", "app_id": "926"})
        assert placed.status_code == 201, placed.text
        call = await wait_for_recording(api, placed.json()["id"], "archived")

        # What Exotel (the simulator) serves: only with the account's credentials.
        url = call["recording_url"]
        assert url.startswith(f"{simulator_url}/recordings/")
        assert (await http.get(url)).status_code == 401
        assert (await http.get(url, auth=("someone", "else"))).status_code == 401
        exotel = await http.get(url, auth=(FAKE_API_KEY, FAKE_API_TOKEN))
        assert exotel.status_code == 200

        served = await api.get(f"/calls/{call['id']}/recording")
        part = await api.get(f"/calls/{call['id']}/recording", headers={"Range": "bytes=44-"})
        log = (await http.get(f"{simulator_url}/_simulator/log")).json()

    digest = hashlib.sha256(exotel.content).hexdigest()
    assert call["recording"]["sha256"] == digest
    assert call["recording"]["attempts"] == 2
    assert hashlib.sha256(served.content).hexdigest() == digest
    assert served.headers["content-type"] == "audio/wav"
    assert part.status_code == 206
    assert part.content == exotel.content[44:]
    fetches = [e["status"] for e in log if e["path"].startswith("/recordings/")]
    # The archive's two fetches (500, then 200), then this test's three.
    assert fetches == [500, 200, 401, 401, 200]
    assert (deployment.workdir / "recordings" / call["id"]).read_bytes() == exotel.content


async def test_a_simulator_started_without_a_key_answers_any_credentials(
    deployment: Deployment,
) -> None:
    """`exocall simulator` on its own, and exocall with any fake key (docs/simulator.md): calls
    are placed and recordings archived through it."""
    deployment.env |= {"JOBS_POLL_SECONDS": "0.2"}
    key = {name: deployment.env.pop(name) for name in ("EXOTEL_API_KEY", "EXOTEL_API_TOKEN")}
    simulator_url = deployment.start_simulator("--callback-delay", "0.2")
    deployment.env |= key
    api_url = deployment.start_server()
    async with (
        httpx.AsyncClient(base_url=api_url, headers=AUTH, timeout=30) as api,
        httpx.AsyncClient(timeout=30) as http,
    ):
        placed = await api.post("/calls", json={"from": "09052161110", "app_id": "926"})
        assert placed.status_code == 201, placed.text
        call = await wait_for_recording(api, placed.json()["id"], "archived")
        anyone = await http.get(call["recording_url"], auth=("anyone", "at-all"))
        nobody = await http.get(call["recording_url"])  # Basic auth it still needs
    assert call["recording_url"].startswith(simulator_url)
    assert anyone.status_code == 200
    assert hashlib.sha256(anyone.content).hexdigest() == call["recording"]["sha256"]
    assert nobody.status_code == 401
