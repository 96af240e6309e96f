"""A campaign's state file, next to its CSV: which rows were submitted, in which batches, with
which keys. It is replaced atomically after every batch, so whenever the CLI stops (Ctrl-C, a
crash, a lost terminal) the file says what was sent, and `--resume` carries on from there."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

STATE_SUFFIX = ".exocall.json"


class StateRefused(Exception):
    """The state file forbids going on as asked; the message says what to do instead."""


class SubmittedCall(BaseModel):
    line: int
    idempotency_key: str
    call_id: uuid.UUID
    # The batch the call belongs to. Not always the batch that was submitted: a key the service
    # already knew (a batch whose answer was lost in a crash) brings back the call of its
    # first batch.
    batch_id: uuid.UUID | None


class SubmittedBatch(BaseModel):
    id: uuid.UUID
    calls: list[SubmittedCall]


class CampaignState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    campaign_id: str
    app_id: str
    caller_id: str | None
    # The campaign's policy options, as written (`--retry` ...): the rows submitted on
    # `--resume` get the same.
    policy: dict[str, str] = {}
    batches: list[SubmittedBatch] = []

    def submitted(self) -> dict[int, SubmittedCall]:
        """The submitted rows, by line."""
        return {call.line: call for batch in self.batches for call in batch.calls}

    def batches_to_follow(self) -> list[uuid.UUID]:
        """Every batch holding a call of the campaign, once each."""
        ids = (call.batch_id for batch in self.batches for call in batch.calls)
        return list(dict.fromkeys(batch_id for batch_id in ids if batch_id is not None))

    def loose_calls(self) -> list[uuid.UUID]:
        """Calls in no batch: a CSV's own key that a single `POST /calls` had used."""
        return [c.call_id for b in self.batches for c in b.calls if c.batch_id is None]


def state_path(csv_path: Path) -> Path:
    return csv_path.with_name(csv_path.name + STATE_SUFFIX)


def open_state(
    path: Path,
    *,
    campaign_id: str,
    app_id: str,
    caller_id: str | None,
    policy: dict[str, str],
    resume: bool,
) -> CampaignState:
    """The campaign's state: the one in `path` when resuming, a new one otherwise. Never starts
    a campaign over silently: an existing state without `--resume` is refused."""
    existing = _load(path)
    if existing is None:
        return CampaignState(
            campaign_id=campaign_id, app_id=app_id, caller_id=caller_id, policy=policy
        )
    if not resume:
        raise StateRefused(
            f"{path} exists: a campaign from this file was started. Run again with --resume to "
            "continue it, or delete that file to start over."
        )
    if existing.campaign_id != campaign_id:
        raise StateRefused(
            f"{path} belongs to another campaign: the CSV file or --app-id changed since it was "
            f"started (with --app-id {existing.app_id})"
        )
    if existing.caller_id != caller_id:
        raise StateRefused(f"the campaign was started with --caller-id {existing.caller_id}")
    if existing.policy != policy:
        started = " ".join(
            f"--{name.replace('_', '-')} '{text}'" for name, text in existing.policy.items()
        )
        raise StateRefused(
            f"the campaign was started with {started or 'no policy options'}: resume it with "
            "the same"
        )
    return existing


def save_state(state: CampaignState, path: Path) -> None:
    """Replace `path` atomically: a reader (or a crash) sees the old state or the new one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("w") as file:
            file.write(state.model_dump_json(indent=1))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:  # after Ctrl-C too: no half-written file left behind
        temporary.unlink(missing_ok=True)


def _load(path: Path) -> CampaignState | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return CampaignState.model_validate_json(text)
    except ValidationError:
        raise StateRefused(
            f"{path} is not a campaign state this version can read; move it away to start over"
        ) from None
