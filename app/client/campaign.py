"""`exocall campaign`: call every number of a CSV file through `POST /calls/batch`, follow the
calls to their end, and say how they ended.

Every row is validated before anything is sent. Every row has an idempotency key (the file's
own, or one derived from the file's content, the app id and the row's line), so submitting a row
again, after any interruption, returns its call and never dials anyone twice.

Batches are submitted one at a time, each once the previous one has left the queue: the service
dispatches the oldest queued call first, so a whole campaign queued at once would hold every
other caller's calls behind it for as long as it takes to send it. It also makes Ctrl-C a pause:
the calls already queued go on, and `--resume` submits the rest.
"""

from __future__ import annotations

import csv
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console

from app.calls.state import TERMINAL
from app.client.api import ExocallClient, ServiceError, ServiceUnreachable
from app.client.outcome import ExitCode, report_failure
from app.client.policy import PolicyText
from app.client.progress import (
    CampaignDisplay,
    DispatchMeter,
    Snapshot,
    campaign_display,
    summary_table,
)
from app.client.rows import Campaign, CampaignInvalid, CampaignRow, read_campaign
from app.client.state import (
    CampaignState,
    StateRefused,
    SubmittedBatch,
    SubmittedCall,
    open_state,
    save_state,
    state_path,
)
from app.db.models import CallStatus

POLL_SECONDS = 1.0
RESULT_COLUMNS = [
    "line",
    "number",
    "idempotency_key",
    "call_id",
    "sid",
    "status",
    "error_code",
    "digits",
    "attempts",  # made; the status is the last one's, or the call's own when none was made
    "price",  # the attempts' total, once Exotel's call details have it
]
NOT_SUBMITTED = "not-submitted"


@dataclass(frozen=True)
class CampaignOptions:
    app_id: str
    caller_id: str | None
    resume: bool
    chunk: int  # calls per batch
    rate_limit: int  # the account's, per minute: shown, not enforced (the service does that)
    timeout: float  # give up once no call has changed status for this long
    results: Path | None
    policy: PolicyText = field(default_factory=PolicyText)  # every row's, under its own cells


def run_campaign(
    client: ExocallClient, csv_path: Path, options: CampaignOptions, *, out: Console, err: Console
) -> ExitCode:
    try:
        campaign = read_campaign(
            csv_path, app_id=options.app_id, caller_id=options.caller_id, policy=options.policy
        )
    except CampaignInvalid as exc:
        err.print(f"{csv_path}: nothing was sent; every row must be valid first:")
        for problem in exc.problems:
            err.print(f"  {problem}")
        return ExitCode.INVALID
    if campaign.ignored_columns:
        err.print(f"note: ignoring the columns {', '.join(campaign.ignored_columns)}")
    path = state_path(csv_path)
    try:
        state = open_state(
            path,
            campaign_id=campaign.campaign_id,
            app_id=options.app_id,
            caller_id=options.caller_id,
            policy=options.policy.as_dict(),
            resume=options.resume,
        )
    except StateRefused as exc:
        err.print(f"error: {exc}")
        return ExitCode.INVALID
    save_state(state, path)  # from here on, running it again needs --resume
    return _run(client, campaign, state, path, options, title=csv_path.name, out=out, err=err)


def _run(
    client: ExocallClient,
    campaign: Campaign,
    state: CampaignState,
    path: Path,
    options: CampaignOptions,
    *,
    title: str,
    out: Console,
    err: Console,
) -> ExitCode:
    runner = CampaignRunner(client, campaign, state, path, options)
    try:
        with campaign_display(out, title) as display:
            snapshot = runner.run(display)
    except KeyboardInterrupt:
        err.print(f"interrupted: what was sent is kept in {path}; run again with --resume")
        return ExitCode.INTERRUPTED
    except (ServiceError, ServiceUnreachable) as exc:
        code = report_failure(err, exc)
        err.print(f"what was sent is kept in {path}; run again with --resume")
        return code
    out.print(summary_table(snapshot, title=f"{title}: calls by status"))
    if options.results:
        write_results(options.results, campaign, state, client)
    if not snapshot.finished:
        err.print(
            f"no call changed status for {options.timeout:g} s: stopped following. The calls "
            "go on; run again with --resume to follow them to the end"
        )
        return ExitCode.TIMED_OUT
    return ExitCode.OK


class CampaignRunner:
    """Submits the rows not yet submitted, a batch at a time, and follows every call."""

    def __init__(
        self,
        client: ExocallClient,
        campaign: Campaign,
        state: CampaignState,
        path: Path,
        options: CampaignOptions,
    ) -> None:
        self._client = client
        self._state = state
        self._path = path
        self._options = options
        self._total = len(campaign.rows)
        submitted = state.submitted()
        self._pending = [row for row in campaign.rows if row.line not in submitted]
        self._counts = CampaignCounts(client)
        self._meter = DispatchMeter()
        self._next_due: datetime | None = None  # the soonest of the scheduled calls
        self._counted: Mapping[str, int] = {}

    def run(self, display: CampaignDisplay) -> Snapshot:
        """Until every call is final, or nothing changed for `timeout` seconds since then or
        since the next scheduled call was due. Scheduled calls are not final: they wait for
        their time, a window, their number's limit or their next attempt; they do not hold
        back the next batch, which waits only for the calls queued."""
        last_counts: Mapping[str, int] | None = None
        changed_at = time.monotonic()
        while True:
            snapshot = self._snapshot()
            if self._pending and not snapshot.counts.get(CallStatus.QUEUED):
                self._submit(self._pending[: self._options.chunk])
                continue
            display.show(snapshot)
            if snapshot.finished:
                return snapshot
            if snapshot.counts != last_counts:
                last_counts, changed_at = snapshot.counts, time.monotonic()
            elif time.monotonic() - changed_at >= self._options.timeout:
                # Before giving up, look again: a scheduled call's time may have been put off,
                # or come (it left `scheduled` between the counts and the look).
                again = self._snapshot(look_again=True)
                moved = again.counts != last_counts or (
                    again.counts.get(CallStatus.SCHEDULED) and again.next_due is None
                )
                if not moved and not self._waiting_for(again.next_due):
                    return again
            time.sleep(POLL_SECONDS)

    def _waiting_for(self, next_due: datetime | None) -> bool:
        """Whether a scheduled call is still to be due, or was due within `timeout`."""
        if next_due is None:
            return False
        return datetime.now(UTC) < next_due + timedelta(seconds=self._options.timeout)

    def _snapshot(self, *, look_again: bool = False) -> Snapshot:
        """The campaign now; when its scheduled calls are next due is looked up when the
        counts change (or `look_again`), not on every poll."""
        counts = self._counts.poll(self._state)
        submitted = self._total - len(self._pending)
        # A call scheduled for later was not sent (or, retried, waits to be sent again).
        sent = submitted - counts.get(CallStatus.QUEUED, 0) - counts.get(CallStatus.SCHEDULED, 0)
        if not counts.get(CallStatus.SCHEDULED):
            self._next_due = None
        elif look_again or counts != self._counted:
            self._next_due = self._counts.next_due(self._state)
        self._counted = counts
        return Snapshot(
            total=self._total,
            not_submitted=len(self._pending),
            counts=counts,
            rate=self._meter.record(sent),
            rate_limit=self._options.rate_limit,
            next_due=self._next_due,
        )

    def _submit(self, rows: list[CampaignRow]) -> None:
        try:
            batch = self._client.place_batch([row.call for row in rows])
        except ServiceError as exc:
            if exc.index is not None and exc.index < len(rows):
                exc.about = f"line {rows[exc.index].line}"
            raise
        calls = [
            SubmittedCall(
                line=row.line, idempotency_key=row.key, call_id=call.id, batch_id=call.batch_id
            )
            for row, call in zip(rows, batch.calls, strict=True)
        ]
        self._state.batches.append(SubmittedBatch(id=batch.id, calls=calls))
        save_state(self._state, self._path)
        self._pending = self._pending[len(rows) :]


class CampaignCounts:
    """The campaign's calls by status, summed over its batches. A batch (or a call) whose calls
    are all final is not asked about again."""

    def __init__(self, client: ExocallClient) -> None:
        self._client = client
        self._final_batches: dict[uuid.UUID, dict[str, int]] = {}
        self._final_calls: dict[uuid.UUID, str] = {}
        self._scheduled: dict[uuid.UUID, int] = {}  # each batch's scheduled calls, last seen

    def poll(self, state: CampaignState) -> Counter[str]:
        counts: Counter[str] = Counter()
        for batch_id in state.batches_to_follow():
            batch_counts = self._final_batches.get(batch_id) or self._client.batch_counts(batch_id)
            if all(status in TERMINAL for status in batch_counts):
                self._final_batches[batch_id] = batch_counts
            self._scheduled[batch_id] = batch_counts.get(CallStatus.SCHEDULED, 0)
            counts.update(batch_counts)
        for call_id in state.loose_calls():
            status = self._final_calls.get(call_id) or self._client.get_call(call_id).status
            if status in TERMINAL:
                self._final_calls[call_id] = status
            counts[status] += 1
        return counts

    def next_due(self, state: CampaignState) -> datetime | None:
        """When the soonest of the campaign's scheduled calls is due, if any is scheduled."""
        calls = [
            call
            for batch_id, scheduled in self._scheduled.items()
            if scheduled
            for call in self._client.batch_calls(batch_id, status=CallStatus.SCHEDULED)
        ]
        calls += [
            call
            for call_id in state.loose_calls()
            if call_id not in self._final_calls
            and (call := self._client.get_call(call_id)).status == CallStatus.SCHEDULED
        ]
        return min((c.next_attempt_at for c in calls if c.next_attempt_at), default=None)


def write_results(
    path: Path, campaign: Campaign, state: CampaignState, client: ExocallClient
) -> None:
    """One row per row of the file: its key, its call and how it ended."""
    calls = {
        call.id: call
        for batch_id in state.batches_to_follow()
        for call in client.batch_calls(batch_id)
    }
    submitted = state.submitted()
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(RESULT_COLUMNS)
        for row in campaign.rows:
            if row.line not in submitted:
                writer.writerow(
                    [row.line, row.number, row.key, "", "", NOT_SUBMITTED, "", "", "", ""]
                )
                continue
            call_id = submitted[row.line].call_id
            call = calls.get(call_id) or client.get_call(call_id)
            error_code = call.error.code if call.error else ""
            writer.writerow(
                [
                    *(row.line, row.number, row.key, call.id, call.sid or "", call.status),
                    *(error_code, "" if call.digits is None else call.digits),
                    *(len(call.attempts), "" if call.price is None else call.price),
                ]
            )
