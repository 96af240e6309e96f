"""`exocall call` and `exocall campaign`, as a user runs them: the real commands as processes,
against a real `exocall serve` and the standalone simulator, on every database backend.

The simulator's outcome follows the last digit of the number dialled (docs/simulator.md): the
numbers here are chosen by it, and the simulator's own log says who was dialled, and how often.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import ByteReceiveStream, Process
from anyio.streams.buffered import BufferedByteReceiveStream

from app.calls.callback_auth import passthru_url
from app.calls.state import TERMINAL
from app.client.rows import read_campaign
from app.client.state import state_path
from app.exotel.wire import format_exotel_time
from tests.conftest import (
    AUTH,
    FAKE_ACCOUNT_SID,
    FAKE_CALLBACK_SECRET,
    FAKE_INTERNAL_API_KEY,
    callback_path,
)
from tests.support.eventually import eventually
from tests.support.feed import feed_caught_up
from tests.support.processes import EXOCALL, Deployment, free_ports, with_default_sigint

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

# Bounds on waiting; never asserted on.
COMMAND_DEADLINE_SECONDS = 60.0
WAIT_DEADLINE_SECONDS = 20.0
# One call a second (2 a second, counted over the window plus the 1 s rate margin): a campaign
# of a few numbers lasts a few seconds, long enough to interrupt it while calls are queued.
SLOW_ACCOUNT = {"EXOTEL_RATE_LIMIT": "2", "EXOTEL_RATE_WINDOW_SECONDS": "1"}


def number(digit: str, index: int = 0) -> str:
    """A distinct Indian mobile for each index; the last digit picks the outcome."""
    return f"905216{index:03d}{digit}"


def dial_form(number: str) -> str:
    return "0" + number  # how exocall sends an Indian number to Exotel


@dataclass(frozen=True)
class Exocall:
    """A running service and simulator, and the CLI pointed at them by its environment."""

    api_url: str
    simulator_url: str
    env: dict[str, str]

    async def run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        with anyio.fail_after(COMMAND_DEADLINE_SECONDS):
            return await anyio.run_process([EXOCALL, *args], env=self.env, check=False)

    async def start(self, *args: str) -> Process:
        """The command left running, for a test to signal: Ctrl-C reaches it as from a terminal,
        even when the tests themselves run in the background."""
        return await anyio.open_process(with_default_sigint([EXOCALL, *args]), env=self.env)

    async def dialled(self) -> Counter[str]:
        """How often each number was asked for through Calls/connect."""
        async with httpx.AsyncClient(base_url=self.simulator_url) as simulator:
            log = (await simulator.get("/_simulator/log")).json()
        return Counter(
            entry["from_number"]
            for entry in log
            if entry["path"].endswith("/Calls/connect.json") and entry["from_number"]
        )

    async def calls(self, **params: Any) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=self.api_url, headers=AUTH) as api:
            answer = await api.get("/calls", params={"limit": 200, **params})
        assert answer.status_code == 200, answer.text
        return list(answer.json()["items"])


StartExocall = Callable[..., Exocall]


@pytest.fixture
def start_exocall(deployment: Deployment) -> StartExocall:
    def start(callback_delay: float = 0.3, **settings: str) -> Exocall:
        deployment.env |= settings
        (port,) = free_ports(1)
        api_url = f"http://127.0.0.1:{port}"
        simulator_url = deployment.start_simulator(
            *("--callback-delay", str(callback_delay)),
            *("--passthru-url", passthru_url(api_url, FAKE_CALLBACK_SECRET.encode())),
        )
        deployment.start_server(port=port)
        env = deployment.env | {"EXOCALL_URL": api_url, "EXOCALL_API_KEY": FAKE_INTERNAL_API_KEY}
        return Exocall(api_url, simulator_url, env)

    return start


def out(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode()


def err(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stderr.decode()


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_results(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def summary(output: str) -> dict[str, int]:
    """The summary table's rows: `status  count`."""
    rows = (line.split() for line in output.splitlines())
    return {" ".join(cells[:-1]): int(cells[-1]) for cells in rows if cells and cells[-1].isdigit()}


def submitted_batches(csv_path: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads(state_path(csv_path).read_text())["batches"])
    except FileNotFoundError:
        return []


async def follow_then_end(
    exocall: Exocall, number: str, status: str
) -> subprocess.CompletedProcess[bytes]:
    """`exocall call number`, and once it has printed the call in progress, the call's end
    (`status`), sent as Exotel's terminal callback."""
    process = await exocall.start("call", number, "--app-id", "926", "--timeout", "30")
    assert process.stdout is not None
    assert process.stderr is not None
    printed = BufferedByteReceiveStream(process.stdout)
    try:
        with anyio.fail_after(COMMAND_DEADLINE_SECONDS):
            lines = [await printed.receive_until(b"\n", 65536) + b"\n"]  # call <id> to ...
            while b" in-progress " not in lines[-1]:
                lines.append(await printed.receive_until(b"\n", 65536) + b"\n")
            call_id = lines[0].split()[1].decode()
            sid = lines[-1].split(b" sid ")[1].split()[0].decode()
            recording = f"{exocall.simulator_url}/recordings/{FAKE_ACCOUNT_SID}/{sid}.wav"
            fields = {
                "CallSid": sid,
                "Status": status,
                "RecordingUrl": recording if status == "completed" else "",
                "DateUpdated": format_exotel_time(datetime.now(UTC)),
            }
            async with httpx.AsyncClient(base_url=exocall.api_url) as http:
                ended = await http.post(
                    callback_path(call_id),
                    files={name: (None, value) for name, value in fields.items()},
                )
            assert ended.status_code == 200, ended.text
            stdout = b"".join(lines) + await _rest(printed)
            stderr = await _rest(process.stderr)
            returncode = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return subprocess.CompletedProcess([], returncode, stdout, stderr)


async def _rest(stream: ByteReceiveStream) -> bytes:
    received = b""
    while True:
        try:
            received += await stream.receive()
        except anyio.EndOfStream:
            return received


async def test_call_follows_each_outcome_and_exits_by_it(start_exocall: StartExocall) -> None:
    # The simulator sends no callbacks: each accepted call ends once `exocall call` has shown
    # it in progress, by the test's callback, as Exotel's would.
    exocall = start_exocall(callback_delay=600)
    results: dict[str, subprocess.CompletedProcess[bytes]] = {}

    async def call(name: str, *args: str) -> None:
        results[name] = await exocall.run("call", *args, "--app-id", "926", "--timeout", "30")

    async def ended(name: str, number: str) -> None:
        results[name] = await follow_then_end(exocall, number, name)

    async with anyio.create_task_group() as calls:
        calls.start_soon(ended, "completed", number("0"))
        calls.start_soon(ended, "busy", number("2"))
        calls.start_soon(call, "rejected", number("5"))
        calls.start_soon(call, "invalid", "12345")
        calls.start_soon(call, "unauthenticated", number("1"), "--api-key", "wrong-key")

    completed = results["completed"]
    assert completed.returncode == 0, err(completed)
    lines = out(completed).splitlines()
    assert lines[0].startswith("call ")
    assert lines[0].endswith(f"to +91{number('0')}")
    # Each change on its own line, as it happened: the SID once Exotel accepted the call.
    changes = [line.split()[1] for line in lines[1:]]
    assert changes == ["queued", "in-progress", "completed"]
    assert " sid " in lines[2]
    assert "recording http://127.0.0.1:" in lines[3]

    busy = results["busy"]
    assert busy.returncode == 1, err(busy)
    assert out(busy).splitlines()[-1].split()[1] == "busy"

    rejected = results["rejected"]
    assert rejected.returncode == 1, err(rejected)
    last = out(rejected).splitlines()[-1]
    assert last.split()[1] == "rejected"
    assert f"Call to [{dial_form(number('5'))}] cannot be made because of TRAI NDNC" in last
    assert "Exotel answered 403" in last

    # Refusals of the API, printed plainly and naming the field: nothing placed.
    invalid = results["invalid"]
    assert invalid.returncode == 2
    assert "from: not a valid Indian mobile/landline or E.164 number" in err(invalid)
    unauthenticated = results["unauthenticated"]
    assert unauthenticated.returncode == 3
    assert "401 unauthenticated" in err(unauthenticated)

    assert await exocall.dialled() == Counter(dial_form(number(d)) for d in "025")


async def test_call_names_the_url_it_could_not_reach() -> None:
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    result = await anyio.run_process(
        [EXOCALL, "call", number("0"), "--app-id", "926", "--url", url], check=False
    )
    assert result.returncode == 3
    assert f"exocall at {url}: cannot connect" in err(result)


async def test_without_url_the_commands_go_where_public_base_url_says() -> None:
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "EXOCALL_URL"} | {"PUBLIC_BASE_URL": url}
    result = await anyio.run_process(
        [EXOCALL, "call", number("0"), "--app-id", "926"], check=False, env=env
    )
    assert result.returncode == 3
    assert f"exocall at {url}: cannot connect" in err(result)


async def test_a_campaign_with_bad_rows_reports_them_all_and_sends_nothing(
    start_exocall: StartExocall, tmp_path: Path
) -> None:
    exocall = start_exocall()
    rows = [
        [number("0", 1), "ok"],  # line 2
        ["12345", "bad number"],  # line 3
        [f"+91 {number('0', 1)}", "the number of line 2, spelled otherwise"],  # line 4
        ["", "no number"],  # line 5
        [number("0", 5), "ok"],  # line 6
    ]
    path = write_csv(tmp_path / "bad.csv", ["phone", "custom_field"], rows)

    result = await exocall.run("campaign", str(path), "--app-id", "926")

    assert result.returncode == 2, out(result)
    assert err(result).splitlines()[1:] == [
        "  line 3: phone: not a valid Indian mobile/landline or E.164 number",
        f"  line 4: phone: +91 {number('0', 1)} is already on line 2",
        "  line 5: phone: missing",
    ]
    assert not state_path(path).exists()
    assert await exocall.dialled() == Counter()
    assert await exocall.calls() == []


async def test_what_the_customer_keys_in_the_flow_is_printed_and_in_the_results(
    start_exocall: StartExocall, tmp_path: Path, db_url: str
) -> None:
    """App 927 is the simulator's confirm/cancel flow: its Gather keys the second-to-last digit
    of the number."""
    exocall = start_exocall(callback_delay=1)
    followed = await exocall.run("call", "09052161120", "--app-id", "927", "--timeout", "30")
    assert followed.returncode == 0, err(followed)
    assert "keyed 2" in out(followed)
    await feed_caught_up(db_url)  # the feed shows every event committed (tests/support/feed.py)
    inputs = await exocall.run(
        "events", "tail", "--from-start", "--no-follow", "--type", "call.input"
    )
    (line,) = out(inputs).splitlines()
    fields = line.split()
    assert (fields[1], fields[4], fields[5], fields[6]) == ("call.input", "#2", "keyed", "2")

    path = write_csv(tmp_path / "calls.csv", ["number"], [["09052161110"], ["09052161140"]])
    results_path = tmp_path / "results.csv"
    ran = await exocall.run(
        "campaign", str(path), "--app-id", "927", "--results", str(results_path)
    )
    assert ran.returncode == 0, err(ran)
    rows = read_results(results_path)
    assert [(row["status"], row["digits"]) for row in rows] == [
        ("completed", "1"),
        ("completed", "4"),
    ]


async def test_a_campaign_shows_its_progress_summary_and_results(
    start_exocall: StartExocall, tmp_path: Path
) -> None:
    exocall = start_exocall()
    digits = "0123405"
    numbers = [number(digit, index) for index, digit in enumerate(digits)]
    path = write_csv(tmp_path / "calls.csv", ["number"], [[n] for n in numbers])
    # A run that crashed after its first batch was accepted, before its state file said so:
    # the same rows, with the same keys, are submitted again below.
    campaign = read_campaign(path, app_id="926", caller_id=None)
    first = [row.call.model_dump(mode="json", by_alias=True) for row in campaign.rows[:2]]
    async with httpx.AsyncClient(base_url=exocall.api_url, headers=AUTH) as api:
        answer = await api.post("/calls/batch", json={"calls": first})
        assert answer.status_code == 202, answer.text

    results_path = tmp_path / "results.csv"
    result = await exocall.run(
        "campaign", str(path), "--app-id", "926", "--results", str(results_path)
    )

    assert result.returncode == 0, err(result)
    assert "7/7 done" in out(result)  # the last progress line
    assert summary(out(result)) == {
        "completed": 3,
        "busy": 1,
        "no-answer": 1,
        "failed": 1,
        "rejected": 1,
        "total": 7,
    }
    results = read_results(results_path)
    assert [row["number"] for row in results] == numbers
    assert [row["line"] for row in results] == [str(line) for line in range(2, 9)]
    assert [row["status"] for row in results] == [
        "completed",
        "completed",
        "busy",
        "no-answer",
        "failed",
        "completed",
        "rejected",
    ]
    assert [row["idempotency_key"] for row in results] == [row.key for row in campaign.rows]
    assert [row["error_code"] for row in results][-1] == "exotel_rejected"
    assert all(row["call_id"] for row in results)
    # The two rows submitted before were not dialled again.
    assert await exocall.dialled() == Counter(dial_form(n) for n in numbers)


async def test_a_campaign_killed_with_calls_queued_resumes_without_dialling_twice(
    start_exocall: StartExocall, tmp_path: Path
) -> None:
    exocall = start_exocall(**SLOW_ACCOUNT)
    numbers = [number(digit, index) for index, digit in enumerate("01234010")]
    path = write_csv(tmp_path / "calls.csv", ["number"], [[n] for n in numbers])

    campaign = await exocall.start("campaign", str(path), "--app-id", "926")
    try:

        async def dialling() -> bool:
            return bool(submitted_batches(path)) and bool(await exocall.dialled())

        await eventually(dialling, what="the batch submitted and dialling")
    finally:
        campaign.kill()  # a crash: nothing of the CLI's own runs
        await campaign.wait()
    assert await exocall.calls(status="queued"), "the campaign ended before it was interrupted"

    results_path = tmp_path / "results.csv"
    resumed = await exocall.run(
        "campaign", str(path), "--app-id", "926", "--resume", "--results", str(results_path)
    )

    assert resumed.returncode == 0, err(resumed)
    assert summary(out(resumed))["total"] == len(numbers)
    assert await exocall.dialled() == Counter(dial_form(n) for n in numbers)
    results = read_results(results_path)
    assert [row["number"] for row in results] == numbers
    assert all(row["status"] in TERMINAL for row in results), results


async def test_a_campaign_interrupted_between_batches_submits_the_rest_on_resume(
    start_exocall: StartExocall, tmp_path: Path
) -> None:
    exocall = start_exocall(**SLOW_ACCOUNT)
    numbers = [number(digit, index) for index, digit in enumerate("0123401")]
    path = write_csv(tmp_path / "calls.csv", ["number"], [[n] for n in numbers])

    campaign = await exocall.start("campaign", str(path), "--app-id", "926", "--chunk", "3")
    try:

        async def first_batch_submitted() -> bool:
            return bool(submitted_batches(path))

        await eventually(first_batch_submitted, what="the first batch submitted")
        campaign.send_signal(signal.SIGINT)  # Ctrl-C
        with anyio.fail_after(WAIT_DEADLINE_SECONDS):
            assert await campaign.wait() == 130
    finally:
        if campaign.returncode is None:
            campaign.kill()
            await campaign.wait()
    assert campaign.stderr is not None
    assert "--resume" in (await campaign.stderr.receive()).decode()
    # The rows of the later batches were never sent.
    assert [len(batch["calls"]) for batch in submitted_batches(path)] == [3]
    assert len(await exocall.calls()) == 3

    # Without --resume, the existing state is not started over.
    again = await exocall.run("campaign", str(path), "--app-id", "926", "--chunk", "3")
    assert again.returncode == 2
    assert "--resume" in err(again)

    results_path = tmp_path / "results.csv"
    resumed = await exocall.run(
        "campaign", str(path), "--app-id", "926", "--chunk", "3", "--resume",
        "--results", str(results_path),
    )  # fmt: skip

    assert resumed.returncode == 0, err(resumed)
    assert [len(batch["calls"]) for batch in submitted_batches(path)] == [3, 3, 1]
    assert await exocall.dialled() == Counter(dial_form(n) for n in numbers)
    results = read_results(results_path)
    assert [row["number"] for row in results] == numbers
    assert all(row["status"] in TERMINAL for row in results), results


async def test_events_tail_says_where_the_recording_stands_when_a_call_is_updated(
    start_exocall: StartExocall,
) -> None:
    exocall = start_exocall(JOBS_POLL_SECONDS="0.2")
    placed = await exocall.run("call", number("0"), "--app-id", "926")
    assert placed.returncode == 0, err(placed)

    async def updates() -> list[str]:  # archived: a call.updated
        args = ("events", "tail", "--from-start", "--no-follow", "--type", "call.updated")
        return out(await exocall.run(*args)).splitlines()

    (line,) = await eventually(updates, what="the call.updated of the recording archived")
    assert line.split()[4:8] == ["#3", "completed,", "recording", "archived"]


async def test_events_tail_follows_the_feed_and_filters_it(start_exocall: StartExocall) -> None:
    exocall = start_exocall()
    # From the start: it may make its first request after the call's first event.
    tail = await exocall.start("events", "tail", "--json", "--poll", "0.1", "--from-start")
    try:
        placed = await exocall.run("call", number("2"), "--app-id", "926")  # busy
        assert placed.returncode == 1, err(placed)
        assert tail.stdout is not None
        printed = b""
        with anyio.fail_after(WAIT_DEADLINE_SECONDS):
            while b"call.busy" not in printed:
                printed += await tail.stdout.receive()
        tail.send_signal(signal.SIGINT)  # Ctrl-C
        assert await tail.wait() == 130
    finally:
        if tail.returncode is None:
            tail.kill()
            await tail.wait()
    events = [json.loads(line) for line in printed.decode().splitlines()]
    assert [e["type"] for e in events] == ["call.in_progress", "call.busy"]
    call_id = events[0]["data"]["call"]["id"]

    busy = await exocall.run("events", "tail", "--from-start", "--no-follow", "--type", "call.busy")
    assert busy.returncode == 0, err(busy)
    (line,) = out(busy).splitlines()
    assert line.split()[1:8] == ["call.busy", "call", call_id, "#2", "in-progress", "->", "busy"]
    mine = await exocall.run("events", "tail", "--from-start", "--no-follow", "--call", call_id)
    assert len(out(mine).splitlines()) == 2


# --- calls on a policy ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "line"),
    [
        (["--retry", "11"], "--retry: N: Input should be less than or equal to 10"),
        (["--retry", "3:bsy"], "--retry: STATUSES: 'bsy' is not busy, no-answer or failed"),
        (["--retry", "3:busy:10x"], "--retry: '10x' is not an interval: seconds, or 30m, 2h, 1d"),
        (
            ["--retry", "three"],
            "--retry: 'three' is not N, N:STATUSES or N:STATUSES:WAITS, such as 3 or "
            "3:busy,no-answer:30m,1h",
        ),
        (["--window", "9-21"], "--window: start: '9' is not a time of day as HH:MM (24-hour)"),
        (
            ["--window", "09:00-21:00/Mars/Base"],
            "--window: timezone: 'Mars/Base' is not an IANA time zone",
        ),
        (
            ["--not-before", "2026-12-06T09:30"],
            "--not-before: '2026-12-06T09:30' is not an ISO 8601 date-time with an offset, "
            "such as 2026-12-06T09:30:00+05:30",
        ),
        (
            ["--not-before", "2026-12-06T09:30+05:30", "--expires-at", "2026-12-06T04:00Z"],
            "--expires-at: must be after --not-before",
        ),
    ],
)  # fmt: skip
async def test_a_bad_policy_is_one_line_and_nothing_is_sent(
    options: list[str], line: str, tmp_path: Path
) -> None:
    # Nothing listens at the URL: a request would exit 3, not 2.
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    called = await anyio.run_process(
        [EXOCALL, "call", number("0"), "--app-id", "926", "--url", url, *options], check=False
    )
    assert (called.returncode, err(called)) == (2, f"error: {line}\n")
    path = write_csv(tmp_path / "calls.csv", ["number"], [[number("0")]])
    campaign = await anyio.run_process(
        [EXOCALL, "campaign", str(path), "--app-id", "926", "--url", url, *options], check=False
    )
    assert (campaign.returncode, err(campaign)) == (2, f"error: {line}\n")
    assert not state_path(path).exists()


async def test_a_campaigns_bad_policy_cells_are_reported_by_line(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    rows = [
        [number("0", 1), "3:busy", ""],  # line 2: fine
        [number("0", 2), "3:bsy", ""],
        [number("0", 3), "", "21:00-06:00 Nowhere/Else"],
        [number("0", 4), "", "09:00-21:00/Asia/Dubai"],  # fine
    ]
    path = write_csv(tmp_path / "calls.csv", ["number", "retry", "window"], rows)
    ran = await anyio.run_process(
        [EXOCALL, "campaign", str(path), "--app-id", "926", "--url", f"http://127.0.0.1:{port}"],
        check=False,
    )
    assert ran.returncode == 2, err(ran)
    assert err(ran).splitlines()[1:] == [
        "  line 3: retry: STATUSES: 'bsy' is not busy, no-answer or failed",
        "  line 4: window: timezone: 'Nowhere/Else' is not an IANA time zone",
    ]


async def tell_outcomes(exocall: Exocall, number: str, *outcomes: str) -> None:
    """What the simulator's next Calls/connect requests to `number` do, in turn."""
    async with httpx.AsyncClient(base_url=exocall.simulator_url) as simulator:
        told = await simulator.post(
            "/_simulator/outcomes", json={"number": number, "outcomes": list(outcomes)}
        )
    assert told.status_code == 200, told.text


async def test_call_with_a_retry_follows_each_attempt_to_the_end(
    start_exocall: StartExocall,
) -> None:
    exocall = start_exocall(JOBS_POLL_SECONDS="0.2")
    await tell_outcomes(exocall, number("0"), "busy", "completed")

    result = await exocall.run(
        "call", number("0"), "--app-id", "926", "--retry", "2:busy:1s", "--timeout", "30"
    )

    assert result.returncode == 0, out(result) + err(result)
    lines = out(result).splitlines()
    changes = [line.split()[1] for line in lines[1:]]
    assert changes[-1] == "completed"
    assert "scheduled" in changes
    (scheduled,) = [line for line in lines if line.split()[1] == "scheduled"]
    assert "attempt 1 ended busy, attempt 2 at 20" in scheduled
    sids = [line.split(" sid ")[1].split()[0] for line in lines if " sid " in line]
    assert len(set(sids)) == 2  # each attempt's
    # The second's SID comes with its attempt, or a poll later when the call was seen queued
    # for it before Exotel took it.
    (second,) = [n for n, line in enumerate(lines) if "attempt 2" in line and " at " not in line]
    assert any(f"sid {sids[-1]}" in line for line in lines[second:])
    assert await exocall.dialled() == Counter({dial_form(number("0")): 2})


async def test_a_scheduled_call_is_not_followed_on_request_and_can_be_canceled(
    start_exocall: StartExocall,
) -> None:
    exocall = start_exocall()
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    placed = await exocall.run(
        "call", number("0"), "--app-id", "926", "--not-before", later.isoformat(), "--no-follow"
    )
    assert placed.returncode == 0, err(placed)
    first, stored = out(placed).splitlines()
    call_id = first.split()[1]
    assert stored.split()[1:4] == ["scheduled", "attempt", "1"]
    local = later.astimezone().isoformat(sep=" ")
    assert stored.endswith(f"at {local}")

    canceled = await exocall.run("cancel", call_id)
    assert canceled.returncode == 0, err(canceled)
    assert out(canceled) == f"call {call_id} canceled\n"
    again = await exocall.run("cancel", call_id)
    assert again.returncode == 2
    assert "409" in err(again)
    unknown = await exocall.run("cancel", "5a1e0000-0000-4000-8000-0000000000c9")
    assert unknown.returncode == 2
    assert "404 call_not_found" in err(unknown)
    assert await exocall.dialled() == Counter()


async def test_a_campaign_on_a_policy_waits_for_its_scheduled_calls_and_counts_attempts(
    start_exocall: StartExocall, tmp_path: Path
) -> None:
    exocall = start_exocall(JOBS_POLL_SECONDS="0.2")
    soon = datetime.now(UTC) + timedelta(seconds=4)
    numbers = [number("0", 1), number("0", 2), number("0", 3)]
    await tell_outcomes(exocall, numbers[1], "busy", "completed")
    await tell_outcomes(exocall, numbers[2], "busy", "completed")
    rows = [
        [numbers[0], soon.isoformat(), ""],  # waits, scheduled, for its time
        [numbers[1], "", ""],  # busy, then retried on the campaign's --retry
        [numbers[2], "", "1"],  # its own policy: one attempt
    ]
    path = write_csv(tmp_path / "calls.csv", ["number", "not_before", "retry"], rows)
    results_path = tmp_path / "results.csv"

    ran = await exocall.run(
        "campaign", str(path), "--app-id", "926", "--retry", "2:busy:1s",
        "--results", str(results_path),
    )  # fmt: skip

    assert ran.returncode == 0, out(ran) + err(ran)
    assert summary(out(ran)) == {"completed": 2, "busy": 1, "total": 3}
    results = read_results(results_path)
    assert [(row["status"], row["attempts"]) for row in results] == [
        ("completed", "1"),
        ("completed", "2"),
        ("busy", "1"),
    ]
    assert "price" in results[0]
    assert await exocall.dialled() == Counter(
        {dial_form(numbers[0]): 1, dial_form(numbers[1]): 2, dial_form(numbers[2]): 1}
    )
    (call,) = await exocall.calls(**{"from": numbers[0]})
    assert datetime.fromisoformat(call["dispatched_at"]) >= soon

    # Its rows go on with the policy they were started with, or not at all.
    other = await exocall.run("campaign", str(path), "--app-id", "926", "--retry", "3", "--resume")
    assert other.returncode == 2
    assert "the campaign was started with --retry '2:busy:1s'" in err(other)


async def test_a_campaigns_timeout_counts_from_when_its_scheduled_call_is_due(
    start_exocall: StartExocall, tmp_path: Path
) -> None:
    """Nothing changes while a call waits for its time: that is no reason to stop following."""
    exocall = start_exocall(JOBS_POLL_SECONDS="0.2")
    # Far enough ahead that the command has started and placed the call before then, on a
    # machine so loaded that starting it takes seconds.
    later = datetime.now(UTC) + timedelta(seconds=20)
    path = write_csv(tmp_path / "calls.csv", ["number"], [[number("0", 1)]])
    results_path = tmp_path / "results.csv"

    ran = await exocall.run(
        "campaign", str(path), "--app-id", "926", "--timeout", "3",
        "--not-before", later.isoformat(), "--results", str(results_path),
    )  # fmt: skip

    assert ran.returncode == 0, out(ran) + err(ran)
    first = out(ran).splitlines()[0]
    assert "0/1 done; scheduled 1 (the next due " in first
    # Nothing was dialled yet: the call waits for its time.
    assert first.endswith("; sent 0 in the last minute (limit 200/min), all sent but the scheduled")
    assert [row["status"] for row in read_results(results_path)] == ["completed"]


async def test_opt_out_commands_keep_a_number_from_being_called(
    start_exocall: StartExocall,
) -> None:
    exocall = start_exocall()
    customer = number("0")
    added = await exocall.run("opt-out", "add", customer, "--reason", "asked, ticket 4411")
    assert added.returncode == 0, err(added)
    assert out(added).splitlines()[0] == f"+91{customer} opted out"
    again = await exocall.run("opt-out", "add", f"0{customer}")
    assert out(again).splitlines()[0] == f"+91{customer} was already opted out"
    listed = await exocall.run("opt-out", "list")
    (line,) = out(listed).splitlines()
    assert line.split()[:2] == [f"+91{customer}", "api"]
    assert line.endswith("asked, ticket 4411")

    refused = await exocall.run("call", customer, "--app-id", "926")
    assert refused.returncode == 2
    assert "number_opted_out" in err(refused)

    removed = await exocall.run("opt-out", "remove", customer)
    assert removed.returncode == 0, err(removed)
    assert out(removed) == f"{customer} may be called again\n"
    gone = await exocall.run("opt-out", "remove", customer)
    assert gone.returncode == 2
    assert "404" in err(gone)
    assert out(await exocall.run("opt-out", "list")) == ""
    assert await exocall.dialled() == Counter()
