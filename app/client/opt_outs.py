"""`exocall opt-out add|remove|list`: the numbers never to be called (`/opt-outs`)."""

from __future__ import annotations

from rich.console import Console

from app.client.api import ExocallClient, OptOutView
from app.client.outcome import ExitCode


def add_opt_out(
    client: ExocallClient, number: str, *, reason: str | None, out: Console
) -> ExitCode:
    entry, new = client.opt_out(number, reason)
    out.print(f"{entry.number} opted out" if new else f"{entry.number} was already opted out")
    out.print(describe(entry))
    return ExitCode.OK


def remove_opt_out(client: ExocallClient, number: str, *, out: Console) -> ExitCode:
    client.remove_opt_out(number)
    out.print(f"{number} may be called again")
    return ExitCode.OK


def list_opt_outs(client: ExocallClient, *, out: Console) -> ExitCode:
    """Every opted-out number, newest first, a line each."""
    for entry in client.opt_outs():
        out.print(describe(entry))
    return ExitCode.OK


def describe(entry: OptOutView) -> str:
    """`+919052161119  api  2026-12-05T15:42:31+05:30  asked not to be called`, in this
    machine's time zone."""
    since = entry.created_at.astimezone().isoformat(timespec="seconds")
    return f"{entry.number}  {entry.source:<8}  {since}  {entry.reason or ''}".rstrip()
