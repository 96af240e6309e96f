"""The status state machine, on its own: any order and repetition of a call's updates ends in the
same state, and a terminal status never changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.calls.state import (
    CLOCK_SKEW,
    EXOTEL_TERMINAL,
    TERMINAL,
    InputUpdate,
    RecordingUpdate,
    StatusUpdate,
    apply_input,
    apply_recording,
    apply_update,
    believed,
)
from app.db.models import Call, CallStatus, EventOutcome, RecordingStatus
from app.exotel.wire import IST

T0 = datetime(2024, 9, 16, 15, 50, tzinfo=IST)
CREATED = T0 - timedelta(minutes=1)
HEARD = T0 + timedelta(minutes=1)  # when Exotel's word of the call reached us


def new_call(status: CallStatus = CallStatus.QUEUED) -> Call:
    return Call(
        status=status,
        from_number="+919052161110",
        caller_id="08030752400",
        created_at=CREATED,
        attempts=[],
        max_attempts=1,
    )


def snapshot(call: Call) -> tuple[object, ...]:
    return (
        call.status,
        call.date_updated,
        call.answered_at,
        call.recording_url,
        call.duration,
        call.conversation_duration,
        call.recording_status,
    )


def updates_of_one_call(terminal: CallStatus) -> list[StatusUpdate]:
    """What Exotel may say about one call: accepted, answered, its end (with and without the
    recording), each of which may come late, twice or in any order."""
    answered = terminal == CallStatus.COMPLETED
    end = T0 + timedelta(seconds=40)
    updates = [
        StatusUpdate(CallStatus.IN_PROGRESS, date_updated=T0, date_updated_raw="a", heard_at=HEARD),
        StatusUpdate(
            terminal,
            date_updated=end,
            date_updated_raw="b",
            conversation_duration=32,
            heard_at=HEARD,
        ),
        StatusUpdate(
            terminal,
            date_updated=end,
            date_updated_raw="b",
            recording_url="https://rec.test/1.mp3" if answered else "",
            conversation_duration=32,
            heard_at=HEARD,
        ),
    ]
    if answered:
        updates.append(
            StatusUpdate(
                CallStatus.IN_PROGRESS,
                date_updated=T0 + timedelta(seconds=5),
                date_updated_raw="c",
                conversation_duration=0,
                answered=True,
                heard_at=HEARD,
            )
        )
    return updates


@st.composite
def shuffled_updates(draw: st.DrawFn) -> tuple[list[StatusUpdate], list[StatusUpdate]]:
    terminal = draw(st.sampled_from(sorted(EXOTEL_TERMINAL)))
    updates = updates_of_one_call(terminal)
    # Each update arrives at least once and maybe again, in any order.
    received = updates + draw(st.lists(st.sampled_from(updates), max_size=6))
    return updates, draw(st.permutations(received))


@given(shuffled_updates())
def test_any_order_and_repetition_ends_in_the_same_state(
    case: tuple[list[StatusUpdate], list[StatusUpdate]],
) -> None:
    in_order, received = case
    expected, actual = new_call(), new_call()
    for update in in_order:
        apply_update(expected, update)
    for update in received:
        apply_update(actual, update)
    assert snapshot(actual) == snapshot(expected)


@given(
    st.sampled_from(sorted(TERMINAL)),
    st.lists(
        st.builds(
            StatusUpdate,
            status=st.sampled_from(list(CallStatus)),
            date_updated=st.none() | st.datetimes(timezones=st.just(IST)),
            recording_url=st.none() | st.just("") | st.just("https://rec.test/2.mp3"),
        )
    ),
)
def test_a_terminal_status_never_changes(terminal: CallStatus, updates: list[StatusUpdate]) -> None:
    call = new_call(terminal)
    for update in updates:
        apply_update(call, update)
        assert call.status == terminal


@pytest.mark.parametrize(
    ("current", "new", "outcome", "final"),
    [
        (CallStatus.QUEUED, CallStatus.IN_PROGRESS, EventOutcome.APPLIED, CallStatus.IN_PROGRESS),
        (CallStatus.QUEUED, CallStatus.REJECTED, EventOutcome.APPLIED, CallStatus.REJECTED),
        (CallStatus.QUEUED, CallStatus.UNKNOWN, EventOutcome.APPLIED, CallStatus.UNKNOWN),
        (CallStatus.QUEUED, CallStatus.BUSY, EventOutcome.APPLIED, CallStatus.BUSY),
        # A dispatch verdict arriving after a callback already told the truth.
        (CallStatus.IN_PROGRESS, CallStatus.UNKNOWN, EventOutcome.STALE, CallStatus.IN_PROGRESS),
        (CallStatus.COMPLETED, CallStatus.REJECTED, EventOutcome.STALE, CallStatus.COMPLETED),
        # `unknown` is provisional: any word from Exotel replaces it.
        (CallStatus.UNKNOWN, CallStatus.IN_PROGRESS, EventOutcome.APPLIED, CallStatus.IN_PROGRESS),
        (CallStatus.UNKNOWN, CallStatus.NO_ANSWER, EventOutcome.APPLIED, CallStatus.NO_ANSWER),
        (CallStatus.UNKNOWN, CallStatus.REJECTED, EventOutcome.APPLIED, CallStatus.REJECTED),
        (CallStatus.IN_PROGRESS, CallStatus.REJECTED, EventOutcome.STALE, CallStatus.IN_PROGRESS),
        (CallStatus.IN_PROGRESS, CallStatus.QUEUED, EventOutcome.STALE, CallStatus.IN_PROGRESS),
        (CallStatus.REJECTED, CallStatus.COMPLETED, EventOutcome.STALE, CallStatus.REJECTED),
        (
            CallStatus.IN_PROGRESS,
            CallStatus.IN_PROGRESS,
            EventOutcome.DUPLICATE,
            CallStatus.IN_PROGRESS,
        ),
    ],
)
def test_transitions(
    current: CallStatus, new: CallStatus, outcome: EventOutcome, final: CallStatus
) -> None:
    call = new_call(current)
    assert apply_update(call, StatusUpdate(new)) == outcome
    assert call.status == final


# --- Exotel's times -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instant", "believed_"),
    [
        (CREATED - CLOCK_SKEW, True),
        (CREATED - CLOCK_SKEW - timedelta(seconds=1), False),
        (HEARD + CLOCK_SKEW, True),
        (HEARD + CLOCK_SKEW + timedelta(seconds=1), False),
        (datetime(1970, 1, 1, tzinfo=UTC), False),
        (datetime(9999, 12, 31, 23, 59, 59, tzinfo=IST), False),
    ],
)
def test_exotels_times_are_believed_from_the_calls_creation_to_their_arrival(
    instant: datetime, believed_: bool
) -> None:
    call = new_call()
    assert (believed(instant, call=call, heard_at=HEARD) == instant) is believed_
    assert believed(instant, call=call, heard_at=None) is None  # arrival unknown: nothing


def test_a_date_updated_outside_the_window_freezes_nothing() -> None:
    call = new_call()
    far = datetime(9999, 12, 31, 23, 59, 59, tzinfo=IST)
    apply_update(
        call, StatusUpdate(CallStatus.IN_PROGRESS, far, "9999-12-31 23:59:59", heard_at=HEARD)
    )
    assert (call.status, call.date_updated, call.date_updated_raw) == (
        CallStatus.IN_PROGRESS,
        None,
        None,
    )
    apply_update(call, StatusUpdate(CallStatus.COMPLETED, T0, "a", heard_at=HEARD))
    assert (call.date_updated, call.date_updated_raw) == (T0, "a")


def test_an_answer_dated_outside_the_window_is_when_it_arrived() -> None:
    call = new_call(CallStatus.IN_PROGRESS)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    update = StatusUpdate(CallStatus.IN_PROGRESS, epoch, answered=True, heard_at=HEARD)
    assert apply_update(call, update) == EventOutcome.APPLIED
    assert call.answered_at == HEARD
    # A believable answer heard later, but earlier on Exotel's clock, is the earlier answer.
    apply_update(call, StatusUpdate(CallStatus.IN_PROGRESS, T0, answered=True, heard_at=HEARD))
    assert call.answered_at == T0


def test_a_passthru_time_outside_the_window_does_not_pin_the_digits() -> None:
    call = new_call(CallStatus.IN_PROGRESS)
    call.flow = None
    far = datetime(9999, 12, 31, tzinfo=IST)
    apply_input(call, InputUpdate(at=far, heard_at=HEARD, digits="1", request="a"))
    later = HEARD + timedelta(seconds=10)
    apply_input(call, InputUpdate(at=later, heard_at=later, digits="2", request="b"))
    assert call.digits == "2"
    assert call.flow is not None
    assert [step["at"] for step in call.flow] == [
        HEARD.astimezone(UTC).isoformat(),
        later.astimezone(UTC).isoformat(),
    ]


# --- the recording ------------------------------------------------------------------------

RECORDING = "https://s3-ap-southeast-1.amazonaws.com/exotelrecordings/acme1/a.mp3"


@pytest.mark.parametrize("status", [CallStatus.IN_PROGRESS, *sorted(EXOTEL_TERMINAL)])
def test_exotels_word_that_it_placed_an_unknown_call_clears_why_it_was_unknown(
    status: CallStatus,
) -> None:
    call = new_call(CallStatus.UNKNOWN)
    call.error_code, call.error_message, call.error_at = "exotel_outcome_unknown", "504", T0
    call.error_exotel_status = 504

    assert apply_update(call, StatusUpdate(status)) == EventOutcome.APPLIED

    assert (call.error_code, call.error_message, call.error_at) == (None, None, None)
    assert call.error_exotel_status is None


def test_a_rejected_call_keeps_why() -> None:
    call = new_call(CallStatus.UNKNOWN)
    call.error_code = "exotel_no_record"
    apply_update(call, StatusUpdate(CallStatus.REJECTED))
    assert call.error_code == "exotel_no_record"


def test_a_recording_is_pending_once_the_call_has_ended_with_one() -> None:
    call = new_call(CallStatus.IN_PROGRESS)
    apply_update(call, StatusUpdate(CallStatus.IN_PROGRESS, recording_url=RECORDING))
    assert call.recording_status is None  # not while the call goes on
    apply_update(call, StatusUpdate(CallStatus.COMPLETED))
    assert call.recording_status == RecordingStatus.PENDING

    without = new_call(CallStatus.IN_PROGRESS)
    apply_update(without, StatusUpdate(CallStatus.BUSY, recording_url=""))
    assert without.recording_status is None
    # A URL learnt after the end (a late callback, call details) is archived too.
    apply_update(without, StatusUpdate(CallStatus.BUSY, recording_url=RECORDING))
    assert without.recording_status == RecordingStatus.PENDING


@pytest.mark.parametrize(
    ("start", "to", "moves"),
    [
        (None, RecordingStatus.PENDING, True),
        (None, RecordingStatus.ARCHIVED, False),
        (RecordingStatus.PENDING, RecordingStatus.PENDING, True),
        (RecordingStatus.PENDING, RecordingStatus.ARCHIVED, True),
        (RecordingStatus.PENDING, RecordingStatus.EXPIRED, True),
        (RecordingStatus.PENDING, RecordingStatus.FAILED, True),
        (RecordingStatus.PENDING, RecordingStatus.DELETED, False),
        (RecordingStatus.FAILED, RecordingStatus.PENDING, True),
        (RecordingStatus.ARCHIVED, RecordingStatus.DELETED, True),
        (RecordingStatus.ARCHIVED, RecordingStatus.PENDING, False),
        (RecordingStatus.ARCHIVED, RecordingStatus.FAILED, False),
        (RecordingStatus.EXPIRED, RecordingStatus.PENDING, False),
        (RecordingStatus.DELETED, RecordingStatus.ARCHIVED, False),
        (RecordingStatus.DELETED, RecordingStatus.PENDING, False),
    ],
)
def test_a_recording_moves_only_where_it_may(
    start: RecordingStatus | None, to: RecordingStatus, moves: bool
) -> None:
    call = new_call(CallStatus.COMPLETED)
    call.recording_url, call.recording_status, call.recording_attempts = RECORDING, start, 0
    outcome = apply_recording(call, RecordingUpdate(to, T0, attempted=True, sha256="ab", size=1))
    assert (outcome == EventOutcome.APPLIED) is moves
    assert call.recording_status == (to if moves else start)
    assert call.recording_attempts == (1 if moves else 0)
    assert (call.recording_archived_at == T0) is (moves and to == RecordingStatus.ARCHIVED)
    assert (call.recording_deleted_at == T0) is (moves and to == RecordingStatus.DELETED)


def test_a_call_without_a_recording_url_has_no_recording_to_move() -> None:
    call = new_call(CallStatus.COMPLETED)
    call.recording_attempts = 0
    assert apply_recording(call, RecordingUpdate(RecordingStatus.PENDING, T0)) == EventOutcome.STALE
    assert call.recording_status is None
