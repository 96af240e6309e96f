"""A call's policy as the command line writes it, read into the fields of `POST /calls`."""

from __future__ import annotations

import pytest

from app.api.schemas import CallCreate
from app.client.policy import PolicyInvalid, PolicyText


@pytest.mark.parametrize(
    ("text", "retry"),
    [
        ("3", {"max_attempts": 3, "on": ["busy", "no-answer"], "intervals": [1800]}),
        ("2:failed", {"max_attempts": 2, "on": ["failed"], "intervals": [1800]}),
        (
            "4:busy,no-answer:30m,1h,90,1d",
            {"max_attempts": 4, "on": ["busy", "no-answer"], "intervals": [1800, 3600, 90, 86400]},
        ),
        ("1", {"max_attempts": 1, "on": ["busy", "no-answer"], "intervals": [1800]}),
    ],
)
def test_retry_reads_attempts_statuses_and_waits(text: str, retry: dict[str, object]) -> None:
    assert PolicyText(retry=text).fields() == {"retry": retry}


@pytest.mark.parametrize(
    "text", ["09:00-21:00/Asia/Dubai", "09:00-21:00 Asia/Dubai", " 09:00-21:00  Asia/Dubai "]
)
def test_a_window_takes_its_zone_after_a_slash_or_a_space(text: str) -> None:
    window = {"start": "09:00", "end": "21:00", "timezone": "Asia/Dubai"}
    assert PolicyText(window=text).fields() == {"window": window}


def test_a_window_without_a_zone_is_indias() -> None:
    window = {"start": "21:00", "end": "06:00", "timezone": "Asia/Kolkata"}
    assert PolicyText(window="21:00-06:00").fields() == {"window": window}


def test_times_are_sent_in_utc_and_the_service_takes_what_is_sent() -> None:
    fields = PolicyText(
        not_before="2026-12-06T09:30+05:30", expires_at="2026-12-06T10:00:00Z"
    ).fields()
    assert fields == {
        "not_before": "2026-12-06T04:00:00+00:00",
        "expires_at": "2026-12-06T10:00:00+00:00",
    }
    everything = PolicyText(
        retry="3:busy:30m",
        window="09:00-21:00/Asia/Dubai",
        not_before="2026-12-06T09:30+05:30",
        expires_at="2026-12-06T10:00:00Z",
    ).fields()
    CallCreate.model_validate({"from": "09052161110", "app_id": "926"} | everything)


@pytest.mark.parametrize(
    ("policy", "field", "reason"),
    [
        (PolicyText(retry="0"), "--retry", "N: Input should be greater than or equal to 1"),
        (PolicyText(retry="3::30m"), "--retry", "STATUSES: '' is not busy, no-answer or failed"),
        (PolicyText(retry="3:busy:1:2:3"), "--retry", "'3:busy:1:2:3' is not N, N:STATUSES or "
         "N:STATUSES:WAITS, such as 3 or 3:busy,no-answer:30m,1h"),
        (PolicyText(window="09:00-09:00"), "--window", "start and end must differ"),
        (PolicyText(window="09:00"), "--window", "'09:00' is not HH:MM-HH:MM, optionally "
         "/TIME-ZONE, such as 09:00-21:00 or 09:00-21:00/Asia/Dubai"),
        (PolicyText(expires_at="2026-12-06"), "--expires-at", "'2026-12-06' is not an ISO 8601 "
         "date-time with an offset, such as 2026-12-06T09:30:00+05:30"),
        (
            PolicyText(not_before="2026-12-06T10:00+05:30", expires_at="2026-12-06T04:30Z"),
            "--expires-at",
            "must be after --not-before",
        ),
    ],
)  # fmt: skip
def test_a_value_the_service_would_refuse_is_named_with_why(
    policy: PolicyText, field: str, reason: str
) -> None:
    with pytest.raises(PolicyInvalid) as refused:
        policy.fields()
    assert (refused.value.field, refused.value.reason) == (field, reason)


def test_a_rows_cells_go_over_the_options() -> None:
    options = PolicyText(retry="3", window="09:00-21:00")
    row = PolicyText(retry="1", window="", not_before="2026-12-06T10:00+05:30")
    assert row.under(options) == PolicyText(
        retry="1", window="09:00-21:00", not_before="2026-12-06T10:00+05:30"
    )
    assert options.as_dict() == {"retry": "3", "window": "09:00-21:00"}
