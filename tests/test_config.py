"""The settings: read by variable, in groups, refused with the variable named, and documented."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from app.config import (
    DEVELOPMENT_CALLBACK_SECRET,
    ConfigurationError,
    Settings,
    WebhookTarget,
    variables,
    with_reference,
)
from tests.support.processes import EXOCALL, STRAY_ENV, free_ports

ROOT = Path(__file__).resolve().parent.parent

# A production configuration that starts: obviously fake, its secrets padded to the length
# production requires.
PRODUCTION: dict[str, Any] = {
    "exocall_env": "production",
    "api_keys": "fake-internal-api-key-padded-to-32-characters",
    "callback_secrets": "fake-callback-secret-padded-to-32-characters",
    "exotel_account_sid": "fake-account",
    "exotel_api_key": "fake-exotel-key",
    "exotel_api_token": "fake-exotel-token",
    "public_base_url": "https://exocall.example.com",
}


def refused(**values: Any) -> list[tuple[str, str]]:
    """The problems Settings.load finds with `values`."""
    with pytest.raises(ConfigurationError) as raised:
        Settings.load(env_file=None, **values)
    return raised.value.problems


def named(problems: list[tuple[str, str]]) -> list[str]:
    return [variable for variable, _ in problems]


def test_the_reference_in_the_docs_is_made_from_the_settings() -> None:
    document = (ROOT / "docs" / "configuration.md").read_text()
    assert document == with_reference(document), (
        "docs/configuration.md is out of date: .venv/bin/python -m app.config docs/configuration.md"
    )
    for variable in variables():
        assert f"| `{variable}` |" in document


def test_each_group_reads_its_variables_from_the_environment_and_the_env_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"DISPATCH_WAIT_SECONDS=3\nSPOOL_DIR={tmp_path}/from/the/file\n")
    monkeypatch.setenv("SPOOL_DIR", f"{tmp_path}/from/the/environment")
    monkeypatch.setenv("API_KEYS", "fake-one, fake-two")
    monkeypatch.setenv("EXOTEL_API_KEY", "")  # empty is unset: the simulator serves

    settings = Settings.load(env_file=str(env_file))

    assert settings.dispatch.wait_seconds == 3
    assert settings.callbacks.spool_dir == tmp_path / "from/the/environment"
    assert [key.get_secret_value() for key in settings.service.api_keys] == [
        "fake-one",
        "fake-two",
    ]
    assert settings.exotel.simulated


def test_a_setting_that_cannot_work_is_refused_naming_each_variable() -> None:
    with pytest.raises(ConfigurationError) as refused:
        Settings.load(
            env_file=None,
            EXOTEL_RATE_LIMIT=0,
            WEBHOOK_RETRY_SCHEDULE="5,-1",
            PUBLIC_BASE_URL=None,
        )
    named = [variable for variable, _ in refused.value.problems]
    assert named == ["EXOTEL_RATE_LIMIT", "PUBLIC_BASE_URL", "WEBHOOK_RETRY_SCHEDULE"]


def test_a_misspelt_setting_is_an_error_not_ignored() -> None:
    with pytest.raises(TypeError, match="DISPATCH_WAIT"):
        Settings.load(env_file=None, DISPATCH_WAIT=2)


def test_replace_changes_what_it_names_and_reads_nothing_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kept = tmp_path / "kept"
    settings = Settings.load(env_file=None, CALLBACK_SECRETS="fake-secret", SPOOL_DIR=kept)
    monkeypatch.setenv("SPOOL_DIR", str(tmp_path / "changed/since"))

    moved = settings.replace(PUBLIC_BASE_URL="http://127.0.0.1:19100/")

    assert moved.callbacks.public_base_url == "http://127.0.0.1:19100"  # validated
    assert moved.callbacks.spool_dir == kept
    assert moved.callbacks.signing_secrets == [b"fake-secret"]
    assert moved.dispatch is settings.dispatch


@pytest.mark.parametrize(
    "url",
    [
        "not-a-url",
        "ftp://files.example.com",
        "http://",
        "https://:8443",
        "http://exocall.example.com:0",
        "http://exocall.example.com:99999",
        "https://exocall.example.com/?from=here",
        "https://user:password@exocall.example.com",
        "http://[::1",  # a bracket left open
        "http://exa mple.com",
    ],
)
def test_a_base_url_must_be_http_with_a_host(url: str) -> None:
    assert named(refused(PUBLIC_BASE_URL=url)) == ["PUBLIC_BASE_URL"]
    assert named(refused(EXOTEL_API_BASE_URL=url)) == ["EXOTEL_API_BASE_URL"]


def test_a_base_url_may_have_a_path() -> None:
    settings = Settings.load(env_file=None, PUBLIC_BASE_URL="https://example.com/exocall/")
    assert settings.callbacks.public_base_url == "https://example.com/exocall"


def test_production_requires_a_public_base_url_of_its_own() -> None:
    """Unset, it is 127.0.0.1, where Exotel never reaches: no callback, no Passthru."""
    without = {k: v for k, v in PRODUCTION.items() if k != "public_base_url"}
    assert refused(**without) == [
        (
            "PUBLIC_BASE_URL",
            "production requires it: Exotel can never reach the default, on 127.0.0.1",
        )
    ]
    Settings.load(env_file=None, **PRODUCTION)
    Settings.load(env_file=None, **without | {"exocall_env": "development"})


@pytest.mark.parametrize(
    "url",
    [
        "http://exocall.example.com",  # its URLs carry callback tokens
        "https://127.0.0.1:8000",
        "https://localhost",
        "https://[::1]",
        "https://10.0.0.5",
        "https://0.0.0.0",
    ],
)
def test_production_requires_a_public_base_url_exotel_can_reach_over_https(url: str) -> None:
    assert named(refused(**PRODUCTION | {"public_base_url": url})) == ["PUBLIC_BASE_URL"]
    Settings.load(env_file=None, **PRODUCTION | {"public_base_url": "https://1.2.3.4"})


def test_production_requires_long_secrets_and_development_takes_any() -> None:
    short = {"api_keys": "k", "callback_secrets": "s"}
    assert named(refused(**PRODUCTION | short)) == ["API_KEYS", "CALLBACK_SECRETS"]
    # One short key among long ones is refused too: every key opens the API.
    long_and_short = {"api_keys": f"{PRODUCTION['api_keys']},{'k' * 31}"}
    assert named(refused(**PRODUCTION | long_and_short)) == ["API_KEYS"]
    Settings.load(env_file=None, **PRODUCTION | {"api_keys": "k" * 32})
    Settings.load(env_file=None, **short)


def test_production_refuses_the_published_development_secret() -> None:
    problems = refused(**PRODUCTION | {"callback_secrets": DEVELOPMENT_CALLBACK_SECRET})
    assert named(problems) == ["CALLBACK_SECRETS"]


@pytest.mark.parametrize("proxies", ["nope", "*", "10.0.0.0/8,*", "10.0.0.0/33"])
def test_trusted_proxies_are_addresses_or_cidrs(proxies: str) -> None:
    """`*` would believe anyone's X-Forwarded-For, and so let anyone past CALLBACK_ALLOWED_IPS."""
    assert named(refused(TRUSTED_PROXIES=proxies)) == ["TRUSTED_PROXIES"]
    loaded = Settings.load(env_file=None, TRUSTED_PROXIES="10.250.58.250,fd00::/8")
    assert [str(n) for n in loaded.service.trusted_proxies] == ["10.250.58.250/32", "fd00::/8"]


def test_callbacks_for_no_call_outlast_the_search_for_an_unknown_calls_sid() -> None:
    """4 h of time limit and 2 min of grace: a callback kept 0.1 day (2.4 h) would be gone
    before reconciliation found the call it was for."""
    assert named(refused(CALLBACK_UNMATCHED_RETENTION_DAYS=0.1)) == [
        "CALLBACK_UNMATCHED_RETENTION_DAYS"
    ]
    Settings.load(
        env_file=None, CALLBACK_UNMATCHED_RETENTION_DAYS=0.1, DEFAULT_TIME_LIMIT_SECONDS=3600
    )


def test_production_names_every_problem_at_once() -> None:
    problems = refused(EXOCALL_ENV="production", API_KEYS="k", EXOTEL_API_KEY="fake-exotel-key")
    assert named(problems) == ["EXOCALL_ENV", "PUBLIC_BASE_URL", "API_KEYS"]


@pytest.mark.parametrize(
    "entries",
    [
        "10.0.0.0/33",
        "10.1.2.3/8",  # host bits set: a typo
        "10.0.0.256",
        "garbage!",
        "hooks.test,,10.0.0.0/8",
        "hooks.test,",
        "*",
        "127.0.0.1:0",
        "[::1]:0",
        "hooks.test:99999",
        "hooks.test:" + "9" * 5000,  # beyond what int() reads
        "hooks.test:\uff18\uff10",  # fullwidth digits
        "hooks.test:https",
        "::1:19600",  # an IPv6 address with a port needs brackets
        "[::1",
    ],
)
def test_a_webhook_target_that_is_no_target_is_refused(entries: str) -> None:
    assert named(refused(WEBHOOK_ALLOWED_TARGETS=entries)) == ["WEBHOOK_ALLOWED_TARGETS"]


def test_webhook_targets_are_read_with_their_ports() -> None:
    settings = Settings.load(
        env_file=None,
        WEBHOOK_ALLOWED_TARGETS="127.0.0.1:19600, [::1]:19600,Hooks.Example.com:8443,"
        "*.internal,10.0.0.0/8,[fd00::/8]:443",
    )
    assert settings.webhooks.allowed_targets == [
        WebhookTarget(network=ipaddress.ip_network("127.0.0.1/32"), port=19600),
        WebhookTarget(network=ipaddress.ip_network("::1/128"), port=19600),
        WebhookTarget(host="hooks.example.com", port=8443),
        WebhookTarget(host="*.internal"),
        WebhookTarget(network=ipaddress.ip_network("10.0.0.0/8")),
        WebhookTarget(network=ipaddress.ip_network("fd00::/8"), port=443),
    ]
    assert Settings.load(env_file=None, WEBHOOK_ALLOWED_TARGETS="").webhooks.allowed_targets is None


@pytest.mark.parametrize(
    "variable", ["SIMULATOR_FLOWS", "SIMULATOR_OUTCOMES", "PASSTHRU_REDIRECT_DIGITS"]
)
def test_malformed_json_is_refused_by_name(variable: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # From the environment, where pydantic-settings decoded JSON itself and raised its own
    # error, before any validation could name the variable.
    monkeypatch.setenv(variable, '{"927": ["play"]')
    problems = refused()
    assert named(problems) == [variable]
    assert "not valid JSON" in problems[0][1]


def test_json_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMULATOR_FLOWS", json.dumps({"1": ["hangup"]}))
    monkeypatch.setenv("PASSTHRU_REDIRECT_DIGITS", json.dumps({"926": ["2"]}))
    settings = Settings.load(env_file=None)
    assert settings.simulator.flows == {"1": ["hangup"]}
    assert settings.callbacks.passthru_redirect_digits == {"926": ["2"]}
    assert named(refused(SIMULATOR_FLOWS='{"1": ["dance"]}')) == ["SIMULATOR_FLOWS"]


def test_simulator_outcomes_are_read_and_a_bad_one_is_one_problem_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    planned = {"+91 90521-61112": ["busy", "busy", "completed"], "+14155550100": ["dnd"]}
    monkeypatch.setenv("SIMULATOR_OUTCOMES", json.dumps(planned))
    assert Settings.load(env_file=None).simulator.outcomes == planned
    for bad in (
        {"09052161112": ["busy", "ringing", "dancing"]},  # one problem, not one per name
        {"09052161112": []},
        {"09052161112": "busy"},
        {"a number": ["busy"], "12": ["busy"]},
        ["09052161112"],
    ):
        problems = refused(SIMULATOR_OUTCOMES=json.dumps(bad))
        assert named(problems) == ["SIMULATOR_OUTCOMES"], problems
    (problem,) = refused(SIMULATOR_OUTCOMES='{"9052161112x": ["busy"]}')
    assert "9052161112" not in problem[1]  # numbers are personal: never shown


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "mysql://exocall:fake-db-password@db.example.com/exocall",
        "postgresql://exocall:fake-db-password@db.example.com/exocall",  # psycopg2's
        "postgresql+asyncpg://exocall:fake-db-password@db.example.com:port/exocall",
        "postgresql+asyncpg://exocall:fake-db-password@db.example.com:654321/exocall",
    ],
)
def test_a_database_url_that_cannot_work_is_refused_without_being_shown(url: str) -> None:
    problems = refused(DATABASE_URL=url)
    assert named(problems) == ["DATABASE_URL"]
    assert "fake-db-password" not in str(problems)


def test_an_empty_database_url_is_unset() -> None:
    assert Settings.load(env_file=None, DATABASE_URL="").database.url is None


def test_a_directory_the_service_writes_to_must_be_writable(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("in the way")
    for variable in ("SPOOL_DIR", "RECORDING_STORE"):
        for where in (a_file, a_file / "below"):
            assert named(refused(**{variable: str(where)})) == [variable]
    # One that is not there yet is made when needed, not when the settings are read.
    settings = Settings.load(
        env_file=None, SPOOL_DIR=tmp_path / "spool", RECORDING_STORE=str(tmp_path / "recordings")
    )
    assert settings.callbacks.spool_dir == tmp_path / "spool"
    assert list(tmp_path.iterdir()) == [a_file]


def _exocall(*argv: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(STRAY_ENV)}
    return subprocess.run(
        [EXOCALL, *argv],
        env=clean | env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("argv", "env", "line"),
    [
        (
            ["serve", "--port", "1"],
            {"SIMULATOR_FLOWS": "{not json"},
            "configuration error: SIMULATOR_FLOWS: not valid JSON (",
        ),
        (
            ["migrate"],
            {"DATABASE_URL": "postgres://exocall:fake-db-password@db.example.com/exocall"},
            "configuration error: DATABASE_URL: must be a URL postgresql+asyncpg://",
        ),
        (
            ["deliver", "--port", "1"],
            {"WEBHOOK_ALLOWED_TARGETS": "10.0.0.0/33"},
            "configuration error: WEBHOOK_ALLOWED_TARGETS: '10.0.0.0/33': ",
        ),
        (
            ["serve", "--port", "1"],
            {"SPOOL_DIR": "/dev/null/spool"},
            "configuration error: SPOOL_DIR: /dev/null is not a directory",
        ),
        (
            ["serve", "--port", "0"],  # PUBLIC_BASE_URL follows the port, unset
            {},
            "configuration error: PUBLIC_BASE_URL: must be an http:// or https:// URL",
        ),
    ],
)
def test_a_command_refuses_to_start_in_one_line(
    argv: list[str], env: dict[str, str], line: str, tmp_path: Path
) -> None:
    result = _exocall(*argv, cwd=tmp_path, **env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(line), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr  # the one line, no traceback
    assert "fake-db-password" not in result.stderr + result.stdout
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing made


def test_a_database_that_cannot_be_reached_is_one_line_too(tmp_path: Path) -> None:
    (port,) = free_ports(1)  # nothing listens there
    result = _exocall(
        "migrate",
        cwd=tmp_path,
        DATABASE_URL=f"postgresql+asyncpg://exocall:fake-db-password@127.0.0.1:{port}/exocall",
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("exocall: the database cannot be reached"), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "fake-db-password" not in result.stderr + result.stdout
