"""`exocall events tail`: the event feed, followed from the command line."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from rich.console import Console

from app.client.api import ExocallClient
from app.client.outcome import ExitCode


def line_of(event: dict[str, Any]) -> str:
    """One event, for people: when, what, which call, and where it stands."""
    data = event["data"]
    call = data["call"]
    if event["type"] == "call.input":  # what the customer keyed, not a move of the status
        keyed = call.get("digits")
        where = f"keyed {keyed}" if keyed else "keyed nothing"
    elif event["type"] == "call.updated":  # a final call learnt more: where its recording is
        recording = call.get("recording")
        where = f"{call['status']}, recording {recording['status'] if recording else 'none'}"
    else:
        where = f"{data['previous_status']} -> {call['status']}"
    return (
        f"{event['timestamp']}  {event['type']:<17} call {call['id']}  "
        f"#{data['sequence']}  {where}  sid {call['sid'] or '-'}  {event['id']}"
    )


def tail_events(
    client: ExocallClient,
    *,
    types: Sequence[str],
    call_id: uuid.UUID | None,
    as_json: bool,
    from_start: bool,
    follow: bool,
    poll_seconds: float,
    out: Console,
) -> ExitCode:
    """Print the feed's events as they commit, from now (or from the oldest kept), one per
    line; without `follow`, stop at the end."""
    cursor: str | None = None if from_start else "now"
    try:
        while True:
            events, cursor = client.events(after=cursor, types=types, call_id=call_id)
            for event in events:
                # JSON lines: compact, one event each, for `jq` and other programs.
                out.print(json.dumps(event, separators=(",", ":")) if as_json else line_of(event))
            if not events:
                if not follow:
                    return ExitCode.OK
                time.sleep(poll_seconds)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
