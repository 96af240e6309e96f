"""The `exocall` command. Every subcommand reads the configuration of docs/configuration.md."""

from __future__ import annotations

import asyncio
import logging.config
import os
import signal
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import uvicorn
from rich.console import Console

from app.api.schemas import MAX_BATCH
from app.calls.callback_auth import passthru_url, status_callback_url
from app.calls.dispatch import budget_of
from app.calls.reconcile import Repairs, reconcile_once
from app.client.api import API_KEY_ENV, DEFAULT_URL, URL_ENV, ExocallClient
from app.client.call import cancel_call, place_and_follow
from app.client.campaign import CampaignOptions, run_campaign
from app.client.events import tail_events
from app.client.opt_outs import add_opt_out, list_opt_outs, remove_opt_out
from app.client.outcome import ExitCode, plain_console, reporting_failures
from app.client.policy import RETRY_FORM, WINDOW_FORM, PolicyInvalid, PolicyText
from app.config import ConfigurationError, Settings
from app.db import migrate as migrations
from app.db.embedded import DATA_DIR, embedded_server
from app.db.session import create_engine, create_sessionmaker, is_database_down
from app.exotel.simulator import Simulator, SimulatorConfig
from app.logs import logging_config
from app.main import exotel_client
from app.recordings.backfill import queue_recordings_since

cli = typer.Typer(help="Place Exotel calls and keep their state.", no_args_is_help=True)

Host = Annotated[str, typer.Option(help="Address to listen on.")]
# Where `exocall serve` listens, for the commands that print its URLs.
ServedHost = Annotated[
    str, typer.Option("--host", help="`exocall serve`'s, for PUBLIC_BASE_URL unset.")
]
ServedPort = Annotated[
    int, typer.Option("--port", help="`exocall serve`'s, for PUBLIC_BASE_URL unset.")
]


@contextmanager
def _database(settings: Settings) -> Iterator[Settings]:
    """`settings` with a database: DATABASE_URL's server, or else the embedded one, started
    here unless another command already runs it (and then stopped here)."""
    if settings.database.url is not None:
        yield settings
        return
    with embedded_server(DATA_DIR) as url, _sigterm_unwinds():
        os.environ["DATABASE_URL"] = url  # uvicorn's workers read the configuration afresh
        yield settings.replace(DATABASE_URL=url)


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM as `SystemExit`, so that the embedded server is stopped: uvicorn, once it has shut
    down on SIGTERM, raises the signal again, which would end the process on the spot."""

    def exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@cli.command()
def serve(
    host: Host = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(envvar="WEB_CONCURRENCY", help="Worker processes.")] = 1,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = True,
) -> None:
    """Serve the HTTP API."""
    # Fail here, with a clear message, rather than in every worker.
    settings = _served_at(Settings.load(), host, port)
    # uvicorn's workers read the configuration afresh.
    os.environ["PUBLIC_BASE_URL"] = settings.callbacks.public_base_url
    if workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Each worker counts into files here; /metrics adds them up (app/metrics.py).
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="exocall-metrics-")
    with _database(settings) as settings:
        _run_app(
            "app.main:create_app",
            settings,
            host=host,
            port=port,
            workers=workers,
            access_log=access_log,
            proxy_headers=False,  # the app itself trusts TRUSTED_PROXIES, and only those
        )


def _served_at(settings: Settings, host: str, port: int) -> Settings:
    """`settings` with PUBLIC_BASE_URL, when it is unset, where `exocall serve --host --port`
    serves: the built-in simulator's callbacks reach it on any port, and the URLs the commands
    print are its own."""
    if "public_base_url" in settings.callbacks.model_fields_set:
        return settings
    here = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
    return settings.replace(PUBLIC_BASE_URL=f"http://{f'[{here}]' if ':' in here else here}:{port}")


@cli.command()
def deliver(
    host: Host = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port for /healthz and /metrics.")] = 8002,
) -> None:
    """Deliver webhooks, and nothing else: beside `exocall serve` replicas run with
    WEBHOOK_DELIVERY_IN_SERVE=false."""
    with _database(Settings.load()) as settings:
        _run_app("app.main:create_deliverer_app", settings, host=host, port=port, access_log=False)


# How long an idle keep-alive connection is held open: longer than clients keep theirs (httpx
# 5 s, load balancers 60 s). Held shorter (uvicorn's own default is 5 s), a server closes one
# just as a client sends on it: the request is reset unread, and the client cannot tell that
# from one that was read (a `Calls/connect` then ends `unknown`, never dialled).
KEEP_ALIVE_SECONDS = 75


def _run_app(factory: str, settings: Settings, *, host: str, port: int, **options: Any) -> None:
    """The app `factory` builds, under uvicorn, logging as configured (in every worker too). On
    SIGTERM, requests in flight get SHUTDOWN_GRACE_SECONDS to be answered; then the app shuts
    down."""
    uvicorn.run(
        factory,
        factory=True,
        host=host,
        port=port,
        log_config=_logging_config(settings),
        timeout_graceful_shutdown=settings.service.shutdown_grace_seconds,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        **options,
    )


def _logging_config(settings: Settings) -> dict[str, Any]:
    return logging_config(format=settings.logs_as, level=settings.logs.level)


def _configured() -> Settings:
    """The configuration, with logging set up as it says."""
    settings = Settings.load()
    logging.config.dictConfig(_logging_config(settings))
    return settings


@cli.command()
def migrate() -> None:
    """Bring the database schema to the newest migration."""
    with _database(_configured()) as settings:
        assert settings.database.url is not None
        migrations.upgrade(settings.database.url, pgbouncer=settings.database.pgbouncer)


@cli.command()
def simulator(
    host: Host = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8001,
    callback_delay: Annotated[float, typer.Option(help="Seconds until the status callback.")] = 2.0,
    callback_spread: Annotated[
        float, typer.Option(help="Calls last up to this much longer, each its own share.")
    ] = 0.0,
    response_delay: Annotated[
        float, typer.Option(help="Seconds before Calls/connect answers.")
    ] = 0.0,
    retry_after: Annotated[bool, typer.Option(help="Send Retry-After with 429s.")] = True,
    passthru: Annotated[
        str | None,
        typer.Option(
            "--passthru-url",
            help="Where its flows' Passthru applets GET (SIMULATOR_FLOWS); exocall's "
            "`passthru-url` when absent.",
            show_default=False,
        ),
    ] = None,
    recording_seconds: Annotated[
        float, typer.Option(help="How long each completed call's recording lasts (16 KB/s).")
    ] = 3.0,
    recording_url_validity: Annotated[
        float | None,
        typer.Option(
            help="Sign each RecordingUrl to last this many seconds (Exotel's "
            "RecordingUrlValidity); 403 once expired.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve the Exotel simulator on its own port (rate limit from EXOTEL_RATE_LIMIT/WINDOW).
    With EXOTEL_API_KEY set, its API and recordings answer only to it and EXOTEL_API_TOKEN as
    Basic credentials, as Exotel's do; without, to any Basic credentials."""
    settings = _configured()
    config = SimulatorConfig(
        callback_delay=callback_delay,
        callback_spread=callback_spread,
        response_delay=response_delay,
        rate_limit=settings.exotel.rate_limit,
        rate_window=settings.exotel.rate_window_seconds,
        retry_after=retry_after,
        flows=settings.simulator.flows,
        outcomes=settings.simulator.outcomes,
        price_delay=settings.simulator.price_delay_seconds,
        passthru_url=passthru
        or passthru_url(settings.callbacks.public_base_url, settings.callbacks.signing_secrets[0]),
        recording_seconds=recording_seconds,
        recording_url_validity=recording_url_validity,
        credentials=None if settings.exotel.simulated else settings.exotel.credentials,
    )
    uvicorn.run(
        Simulator(config).app(owns_http=True),
        host=host,
        port=port,
        log_config=_logging_config(settings),
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )


@cli.command()
def reconcile() -> None:
    """Run one round of reconciliation now (the service runs one every interval)."""
    with _database(_configured()) as settings:
        typer.echo(asyncio.run(_reconcile_once(settings)))


async def _reconcile_once(settings: Settings) -> Repairs:
    if settings.exotel.simulated:
        raise typer.BadParameter("needs EXOTEL_API_KEY: the built-in simulator lives in `serve`")
    engine = create_engine(settings.database.url, pgbouncer=settings.database.pgbouncer)
    try:
        async with httpx.AsyncClient() as http:
            return await reconcile_once(
                sessionmaker=create_sessionmaker(engine),
                exotel=exotel_client(settings, http),
                settings=settings.reconcile,
                budget=budget_of(settings.exotel),
            )
    finally:
        await engine.dispose()


@cli.command("callback-url")
def callback_url(host: ServedHost = "127.0.0.1", port: ServedPort = 8000) -> None:
    """Print the account-wide StatusCallback URL, for callbacks set up in an Exotel flow: on
    PUBLIC_BASE_URL, or where `exocall serve --host --port` serves."""
    settings = _served_at(Settings.load(), host, port)
    typer.echo(
        status_callback_url(
            settings.callbacks.public_base_url, settings.callbacks.signing_secrets[0], None
        )
    )


@cli.command("passthru-url")
def passthru_url_command(host: ServedHost = "127.0.0.1", port: ServedPort = 8000) -> None:
    """Print the URL for the Passthru applets of your Exotel flows: on PUBLIC_BASE_URL, or where
    `exocall serve --host --port` serves."""
    settings = _served_at(Settings.load(), host, port)
    typer.echo(
        passthru_url(settings.callbacks.public_base_url, settings.callbacks.signing_secrets[0])
    )


# The options of the commands that are clients of a running service.
# Without --url or EXOCALL_URL, where PUBLIC_BASE_URL says the service is (`make run` on any
# port sets both alike).
ServiceUrl = Annotated[
    str,
    typer.Option("--url", envvar=[URL_ENV, "PUBLIC_BASE_URL"], help="The exocall service."),
]
ApiKey = Annotated[
    str | None,
    typer.Option(envvar=API_KEY_ENV, help="One of the service's API_KEYS.", show_default=False),
]
AppId = Annotated[str, typer.Option(help="Exotel's flow (app) id to connect the customer to.")]
CallerId = Annotated[
    str | None,
    typer.Option(help="The ExoPhone to call from; the service's EXOTEL_CALLER_ID when absent."),
]


# A call's policy (docs/cli.md, "Calls on a policy"), the same for `call` and `campaign`.
Retry = Annotated[
    str | None,
    typer.Option(
        help=f"Attempts in all, the statuses retried and the waits: {RETRY_FORM} (statuses "
        "busy,no-answer and a wait of 30m unless named; the last wait repeats).",
        show_default=False,
    ),
]
Window = Annotated[
    str | None,
    typer.Option(
        help=f"Dial only within these hours: {WINDOW_FORM} (Asia/Kolkata unless named); the "
        "service's CALLING_WINDOW when absent.",
        show_default=False,
    ),
]
NotBefore = Annotated[
    str | None,
    typer.Option(
        help="Not dialled before then: ISO 8601 with an offset (2026-12-06T09:30:00+05:30).",
        show_default=False,
    ),
]
ExpiresAt = Annotated[
    str | None,
    typer.Option(
        help="Not dialled after then (ISO 8601 with an offset): a call still waiting ends "
        "`expired`.",
        show_default=False,
    ),
]


def _policy(text: PolicyText, err: Console) -> dict[str, Any]:
    """The policy's fields of `POST /calls`; a bad value is said in one line, exit status 2."""
    try:
        return text.fields()
    except PolicyInvalid as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(ExitCode.INVALID) from None


@cli.command(
    epilog="Exit status: 0 completed (or, with --no-follow, stored); 1 ended otherwise (busy, "
    "no-answer, failed, canceled, rejected, expired); 2 refused as invalid; 3 the service "
    "unreachable or failing; 4 not over after --timeout."
)
def call(
    number: Annotated[str, typer.Argument(help="The customer's number, in any usual spelling.")],
    app_id: AppId,
    caller_id: CallerId = None,
    custom_field: Annotated[str | None, typer.Option(help="Handed to the flow.")] = None,
    retry: Retry = None,
    window: Window = None,
    not_before: NotBefore = None,
    expires_at: ExpiresAt = None,
    url: ServiceUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Annotated[
        float, typer.Option(min=0, help="Seconds to follow the call before giving up.")
    ] = 600,
    follow: Annotated[
        bool, typer.Option(help="Follow the call to its end; else print how it was stored.")
    ] = True,
) -> None:
    """Place one call through a running exocall and follow it to its end."""
    out, err = plain_console(), plain_console(stderr=True)
    policy = _policy(PolicyText(retry, window, not_before, expires_at), err)
    body = {"from": number, "app_id": app_id, "caller_id": caller_id, "custom_field": custom_field}
    body = {field: value for field, value in body.items() if value is not None} | policy
    with ExocallClient(url, api_key) as client:
        code = reporting_failures(
            err,
            lambda: place_and_follow(
                client, body, timeout=timeout, follow=follow, out=out, err=err
            ),
        )
    raise typer.Exit(code)


@cli.command(
    "cancel",
    epilog="Exit status: 0 canceled, or no attempt after the one under way; 2 the call has "
    "ended already, or there is no such call; 3 the service unreachable or failing.",
)
def cancel(
    call_ref: Annotated[str, typer.Argument(metavar="CALL", help="Our call id, or a SID.")],
    url: ServiceUrl = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Make no attempt of a call after now: one waiting ends `canceled`; one whose attempt is
    under way ends with that attempt's outcome."""
    out, err = plain_console(), plain_console(stderr=True)
    with ExocallClient(url, api_key) as client:
        code = reporting_failures(err, lambda: cancel_call(client, call_ref, out=out))
    raise typer.Exit(code)


@cli.command(
    epilog="Every row is validated before anything is sent. What was sent is kept next to FILE "
    "(in FILE.exocall.json), so --resume carries on after any interruption without dialling "
    "anyone twice. Exit status: 0 every call ended (scheduled is not ended); 2 invalid rows or "
    "options (nothing sent); "
    "3 the service unreachable or failing; 4 calls not over after --timeout; 130 interrupted."
)
def campaign(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            help="A CSV file: a number column; custom_field, idempotency_key, retry, window, "
            "not_before, expires_at optional.",
        ),
    ],
    app_id: AppId,
    caller_id: CallerId = None,
    url: ServiceUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    resume: Annotated[bool, typer.Option(help="Continue the campaign of FILE's state.")] = False,
    results: Annotated[
        Path | None, typer.Option(help="Write each row's call and final status here (CSV).")
    ] = None,
    chunk: Annotated[
        int,
        typer.Option(
            min=1, max=MAX_BATCH, help="Calls per batch, each sent once the last left the queue."
        ),
    ] = MAX_BATCH,
    rate_limit: Annotated[
        int, typer.Option(min=1, help="The account's calls per minute, to show the rate against.")
    ] = 200,
    timeout: Annotated[
        float,
        typer.Option(
            min=0,
            help="Stop following once no call changed for this long (s), counted from when "
            "the next scheduled call is due while one waits.",
        ),
    ] = 600,
    retry: Retry = None,
    window: Window = None,
    not_before: NotBefore = None,
    expires_at: ExpiresAt = None,
) -> None:
    """Call every number of a CSV file, following the calls to their end. The policy options
    apply to every row; a row's own retry, window, not_before and expires_at columns, where
    the file has them and the cell is not empty, to that row."""
    err = plain_console(stderr=True)
    policy = PolicyText(retry, window, not_before, expires_at)
    _policy(policy, err)
    options = CampaignOptions(
        app_id=app_id,
        caller_id=caller_id,
        resume=resume,
        chunk=chunk,
        rate_limit=rate_limit,
        timeout=timeout,
        results=results,
        policy=policy,
    )
    out = plain_console()
    with ExocallClient(url, api_key) as client:
        code = reporting_failures(
            err, lambda: run_campaign(client, file, options, out=out, err=err)
        )
    raise typer.Exit(code)


events_cli = typer.Typer(help="The events calls produce.", no_args_is_help=True)
cli.add_typer(events_cli, name="events")


@events_cli.command(
    epilog="Exit status: 0 at the end (--no-follow); 3 the service unreachable or failing; "
    "130 interrupted."
)
def tail(
    type_: Annotated[
        list[str] | None,
        typer.Option("--type", help="Only this event type (call.completed ...); repeatable."),
    ] = None,
    call_id: Annotated[uuid.UUID | None, typer.Option("--call", help="Only this call's.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Each event as a JSON line.")] = False,
    from_start: Annotated[
        bool, typer.Option(help="Begin with the oldest event kept, not with what comes next.")
    ] = False,
    follow: Annotated[bool, typer.Option(help="Wait for more at the end.")] = True,
    poll: Annotated[float, typer.Option(min=0.05, help="Seconds between looks.")] = 1.0,
    url: ServiceUrl = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Follow the event feed of a running exocall."""
    out, err = plain_console(), plain_console(stderr=True)
    with ExocallClient(url, api_key) as client:
        code = reporting_failures(
            err,
            lambda: tail_events(
                client,
                types=type_ or [],
                call_id=call_id,
                as_json=as_json,
                from_start=from_start,
                follow=follow,
                poll_seconds=poll,
                out=out,
            ),
        )
    raise typer.Exit(code)


opt_out_cli = typer.Typer(
    help="Numbers never to be called, whoever asks (the service's /opt-outs).",
    no_args_is_help=True,
)
cli.add_typer(opt_out_cli, name="opt-out")
OptOutNumber = Annotated[str, typer.Argument(help="Any spelling `exocall call` takes.")]


@opt_out_cli.command("add", epilog="Exit status: 0 opted out (now or already); 2 invalid.")
def opt_out_add(
    number: OptOutNumber,
    reason: Annotated[str | None, typer.Option(help="Why, for people.")] = None,
    url: ServiceUrl = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Opt a number out: no call is made to it, and calls waiting for it are refused when due."""
    out, err = plain_console(), plain_console(stderr=True)
    with ExocallClient(url, api_key) as client:
        code = reporting_failures(err, lambda: add_opt_out(client, number, reason=reason, out=out))
    raise typer.Exit(code)


@opt_out_cli.command("remove", epilog="Exit status: 0 removed; 2 not on the list, or invalid.")
def opt_out_remove(
    number: OptOutNumber, url: ServiceUrl = DEFAULT_URL, api_key: ApiKey = None
) -> None:
    """Take a number off the list: it may be called again."""
    out, err = plain_console(), plain_console(stderr=True)
    with ExocallClient(url, api_key) as client:
        code = reporting_failures(err, lambda: remove_opt_out(client, number, out=out))
    raise typer.Exit(code)


@opt_out_cli.command("list")
def opt_out_list(url: ServiceUrl = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Every opted-out number, newest first: number, source (api, passthru), since, reason."""
    out, err = plain_console(), plain_console(stderr=True)
    with ExocallClient(url, api_key) as client:
        code = reporting_failures(err, lambda: list_opt_outs(client, out=out))
    raise typer.Exit(code)


recordings_cli = typer.Typer(help="The recordings archive.", no_args_is_help=True)
cli.add_typer(recordings_cli, name="recordings")


@recordings_cli.command()
def backfill(
    since: Annotated[
        datetime,
        typer.Option(
            formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"],
            help="Calls created since then (UTC).",
            show_default=False,
        ),
    ],
) -> None:
    """Queue the recordings of ended calls created since SINCE that have a recording URL and
    none archived, pending or expired (failed ones are tried again). The running service
    fetches them; a URL that has expired ends `expired`."""
    since = since.replace(tzinfo=UTC)
    with _database(_configured()) as settings:
        queued = asyncio.run(_backfill(settings, since))
    typer.echo(
        f"queued {queued} recordings for the archive (calls since {since:%Y-%m-%d %H:%M} UTC)"
    )


async def _backfill(settings: Settings, since: datetime) -> int:
    engine = create_engine(settings.database.url, pgbouncer=settings.database.pgbouncer)
    try:
        return await queue_recordings_since(create_sessionmaker(engine), since=since)
    finally:
        await engine.dispose()


def main() -> None:
    """The commands. Settings that cannot work, read or made from a command's options (`serve
    --port 0`), are a line per problem (never a value: some are secrets) and exit status 2."""
    try:
        cli()
    except ConfigurationError as exc:
        for variable, message in exc.problems:
            typer.echo(f"configuration error: {variable}: {message}", err=True)
        raise SystemExit(2) from None
    except Exception as exc:
        if not is_database_down(exc):
            raise
        typer.echo(
            f"exocall: the database cannot be reached ({type(exc).__name__}): is the server "
            "DATABASE_URL names up, and is the URL right?",
            err=True,
        )
        raise SystemExit(1) from None
