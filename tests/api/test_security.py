"""The internal API's keys, the production configuration, and what must never leak."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import httpx
import pytest

from app.config import ConfigurationError, Settings
from app.exotel.client import ExotelClient
from app.main import create_app
from tests.conftest import FAKE_INTERNAL_API_KEY, make_settings, place_body, serving
from tests.support.exotel_double import ExotelDouble
from tests.support.processes import EXOCALL, STRAY_ENV
from tests.test_config import PRODUCTION

PROTECTED = [
    ("POST", "/calls"),
    ("POST", "/calls/batch"),
    ("GET", "/calls"),
    ("GET", "/calls/5a1e0000-0000-4000-8000-0000000000b1"),
    ("GET", "/calls/5a1e0000-0000-4000-8000-0000000000b2/events"),
    ("GET", "/batches/5a1e0000-0000-4000-8000-0000000000b3"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-key", f"Basic {FAKE_INTERNAL_API_KEY}", "Bearer "]
)
async def test_the_internal_api_needs_a_key(
    client: httpx.AsyncClient, method: str, path: str, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    client.headers.pop("Authorization")
    response = await client.request(method, path, json=place_body(), headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "unauthenticated"
    client.headers["Authorization"] = f"Bearer {FAKE_INTERNAL_API_KEY}"
    assert (await client.get("/calls")).json()["items"] == []  # nothing was created


@pytest.mark.anyio
async def test_every_configured_key_is_accepted(db_url: str, exotel: ExotelDouble) -> None:
    from app.main import create_app

    settings = make_settings(db_url, api_keys="old-fake-key,new-fake-key")
    app = create_app(settings, exotel_transport=httpx.MockTransport(exotel.handle))
    async with serving(app) as client:
        for key in ("old-fake-key", "new-fake-key"):
            response = await client.get("/calls", headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_health_checks_are_open(client: httpx.AsyncClient, path: str) -> None:
    client.headers.pop("Authorization")
    assert (await client.get(path)).status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/calls", "/ui"])
async def test_without_keys_in_development_the_api_and_the_page_are_open(
    db_url: str, exotel: ExotelDouble, path: str
) -> None:
    from app.main import create_app

    app = create_app(
        make_settings(db_url, api_keys=""), exotel_transport=httpx.MockTransport(exotel.handle)
    )
    async with serving(app) as client:
        client.headers.pop("Authorization")
        assert (await client.get(path)).status_code == 200


@pytest.mark.parametrize(
    "missing",
    ["api_keys", "callback_secrets", "exotel_account_sid", "exotel_api_key", "exotel_api_token"],
)
def test_production_names_what_is_missing(missing: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.load(env_file=None, **(PRODUCTION | {missing: ""}))
    assert missing.upper() in str(raised.value)


def test_production_reaches_exotel_over_tls_only() -> None:
    Settings.load(env_file=None, **PRODUCTION)
    with pytest.raises(ConfigurationError, match="https"):
        Settings.load(
            env_file=None, **(PRODUCTION | {"exotel_api_base_url": "http://api.exotel.com"})
        )


def test_production_refuses_to_start_and_says_why_without_the_secrets(tmp_path: Any) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(STRAY_ENV)} | {
        "EXOCALL_ENV": "production",
        "EXOTEL_API_KEY": "fake-exotel-key-value",
        "EXOTEL_API_TOKEN": "fake-exotel-token-value",
    }
    result = subprocess.run(
        [EXOCALL, "serve", "--port", "1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "API_KEYS, CALLBACK_SECRETS, EXOTEL_ACCOUNT_SID" in result.stderr
    assert "fake-exotel-key-value" not in result.stderr + result.stdout
    assert "fake-exotel-token-value" not in result.stderr + result.stdout


def test_a_lease_of_two_beats_or_less_is_refused() -> None:
    # A worker stops claiming half a lease after its last beat: between two healthy beats.
    with pytest.raises(ConfigurationError, match="JOBS_LEASE_SECONDS: must be more than twice"):
        Settings.load(env_file=None, JOBS_BEAT_SECONDS=5, JOBS_LEASE_SECONDS=10)
    Settings.load(env_file=None, JOBS_BEAT_SECONDS=1, JOBS_LEASE_SECONDS=3)


def test_secrets_stay_out_of_reprs() -> None:
    settings = Settings.load(env_file=None, **PRODUCTION)
    client = ExotelClient(
        httpx.AsyncClient(),
        base_url="https://api.exotel.com",
        account_sid="fake-account",
        api_key="fake-exotel-key",
        api_token="fake-exotel-token",
        timeout_seconds=1,
    )
    for text in (repr(settings), str(settings), repr(client), str(settings.model_dump())):
        secrets = (PRODUCTION["api_keys"], PRODUCTION["callback_secrets"])
        for secret in (*secrets, "fake-exotel-key", "fake-exotel-token"):
            assert secret not in text


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("peer", "forwarded_for", "trusted", "status"),
    [
        ("203.0.113.7", None, "", 200),  # from the allowlisted network
        ("198.51.100.9", None, "", 403),  # from elsewhere
        ("198.51.100.9", "203.0.113.7", "", 403),  # X-Forwarded-For from an untrusted peer
        ("10.0.0.2", "203.0.113.7", "10.0.0.0/8", 200),  # via a trusted proxy
        ("10.0.0.2", "198.51.100.9", "10.0.0.0/8", 403),
        ("10.0.0.2", "203.0.113.7, 10.0.0.3", "10.0.0.0/8", 200),  # two trusted hops
    ],
)
async def test_callbacks_only_from_allowed_sources(
    db_url: str,
    exotel: ExotelDouble,
    peer: str,
    forwarded_for: str | None,
    trusted: str,
    status: int,
) -> None:
    from app.main import create_app
    from tests.conftest import callback_path

    settings = make_settings(
        db_url, callback_allowed_ips="203.0.113.0/24,2001:db8::/32", trusted_proxies=trusted
    )
    app = create_app(settings, exotel_transport=httpx.MockTransport(exotel.handle))
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=(peer, 40000)), base_url="http://x"
        ) as client,
    ):
        body = {"CallSid": "abc", "Status": "completed"}
        response = await client.post(callback_path(None), data=body, headers=headers)
    assert response.status_code == status, response.text
    if status == 403:
        assert response.json()["error"]["code"] == "callback_source_forbidden"


@pytest.mark.anyio
async def test_an_empty_exotel_key_means_the_simulator_serves(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`EXOTEL_API_KEY=` (as .env.example has it) is no key: the built-in simulator serves,
    rather than the real Exotel host asked with an empty key."""
    monkeypatch.setenv("EXOTEL_API_KEY", "")
    monkeypatch.setenv("EXOTEL_API_TOKEN", " ")
    settings = Settings.load(env_file=None, database_url=db_url, exotel_caller_id="08030752400")
    assert settings.exotel.simulated
    async with serving(create_app(settings)) as client:
        response = await client.post("/calls", json=place_body())
    assert response.status_code == 201, response.text
    assert response.json()["flow_url"].startswith("http://my.exotel.com/simulated/")
