"""The settings: read by variable, in groups, refused with the variable named, and documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import ConfigurationError, Settings, variables, with_reference

ROOT = Path(__file__).resolve().parent.parent


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
    env_file.write_text("DISPATCH_WAIT_SECONDS=3\nSPOOL_DIR=/from/the/file\n")
    monkeypatch.setenv("SPOOL_DIR", "/from/the/environment")
    monkeypatch.setenv("API_KEYS", "fake-one, fake-two")
    monkeypatch.setenv("EXOTEL_API_KEY", "")  # empty is unset: the simulator serves

    settings = Settings.load(env_file=str(env_file))

    assert settings.dispatch.wait_seconds == 3
    assert settings.callbacks.spool_dir == Path("/from/the/environment")
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
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings.load(env_file=None, CALLBACK_SECRETS="fake-secret", SPOOL_DIR="/kept")
    monkeypatch.setenv("SPOOL_DIR", "/changed/since")

    moved = settings.replace(PUBLIC_BASE_URL="http://127.0.0.1:19100/")

    assert moved.callbacks.public_base_url == "http://127.0.0.1:19100"  # validated
    assert moved.callbacks.spool_dir == Path("/kept")
    assert moved.callbacks.signing_secrets == [b"fake-secret"]
    assert moved.dispatch is settings.dispatch
