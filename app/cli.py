"""The `exocall` command. Every subcommand reads the configuration of CONTRACT.md."""

from __future__ import annotations

import asyncio
import logging.config
import os
import tempfile
from typing import Annotated, Any

import httpx
import typer
import uvicorn
from pydantic import ValidationError

from app.calls.callback_auth import status_callback_url
from app.calls.dispatcher import budget_of
from app.calls.reconcile import Repairs, reconcile_once
from app.config import Settings
from app.db import migrate as migrations
from app.db.session import create_engine, create_sessionmaker
from app.exotel.simulator import Simulator, SimulatorConfig
from app.logs import logging_config
from app.main import exotel_client

cli = typer.Typer(help="Place Exotel calls and keep their state.", no_args_is_help=True)

Host = Annotated[str, typer.Option(help="Address to listen on.")]


def load_settings() -> Settings:
    """The configuration, or a clear message naming what is wrong (never the values: some are
    secrets) and exit status 2."""
    try:
        return Settings()
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]).upper()
            message = str(error["msg"]).removeprefix("Value error, ")
            typer.echo(f"configuration error: {field + ': ' if field else ''}{message}", err=True)
        raise typer.Exit(2) from None


@cli.command()
def serve(
    host: Host = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(envvar="WEB_CONCURRENCY", help="Worker processes.")] = 1,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = True,
) -> None:
    """Serve the HTTP API."""
    settings = load_settings()  # fail here, with a clear message, rather than in every worker
    if workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Each worker counts into files here; /metrics adds them up (app/metrics.py).
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="exocall-metrics-")
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=_logging_config(settings),  # applied by every worker too
        access_log=access_log,
        proxy_headers=False,  # the app itself trusts TRUSTED_PROXIES, and only those
        # SIGTERM: requests in flight get this long to be answered; then the app shuts down.
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
    )


def _logging_config(settings: Settings) -> dict[str, Any]:
    return logging_config(format=settings.logs_as, level=settings.log_level)


def _configured() -> Settings:
    """The configuration, with logging set up as it says."""
    settings = load_settings()
    logging.config.dictConfig(_logging_config(settings))
    return settings


@cli.command()
def migrate() -> None:
    """Bring the database schema to the newest migration."""
    migrations.upgrade(_configured().database_url)


@cli.command()
def simulator(
    host: Host = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8001,
    callback_delay: Annotated[float, typer.Option(help="Seconds until the status callback.")] = 2.0,
    response_delay: Annotated[
        float, typer.Option(help="Seconds before Calls/connect answers.")
    ] = 0.0,
    retry_after: Annotated[bool, typer.Option(help="Send Retry-After with 429s.")] = True,
) -> None:
    """Serve the Exotel simulator on its own port (rate limit from EXOTEL_RATE_LIMIT/WINDOW)."""
    settings = _configured()
    config = SimulatorConfig(
        callback_delay=callback_delay,
        response_delay=response_delay,
        rate_limit=settings.exotel_rate_limit,
        rate_window=settings.exotel_rate_window_seconds,
        retry_after=retry_after,
    )
    uvicorn.run(
        Simulator(config).app(owns_http=True),
        host=host,
        port=port,
        log_config=_logging_config(settings),
    )


@cli.command()
def reconcile() -> None:
    """Run one round of reconciliation now (the service runs one every interval)."""
    typer.echo(asyncio.run(_reconcile_once(_configured())))


async def _reconcile_once(settings: Settings) -> Repairs:
    if settings.uses_simulator:
        raise typer.BadParameter("needs EXOTEL_API_KEY: the built-in simulator lives in `serve`")
    engine = create_engine(settings.database_url)
    try:
        async with httpx.AsyncClient() as http:
            return await reconcile_once(
                sessionmaker=create_sessionmaker(engine),
                exotel=exotel_client(settings, http),
                settings=settings,
                budget=budget_of(settings),
            )
    finally:
        await engine.dispose()


@cli.command("callback-url")
def callback_url() -> None:
    """Print the account-wide StatusCallback URL, for callbacks set up in an Exotel flow."""
    settings = load_settings()
    typer.echo(status_callback_url(settings.public_base_url, settings.signing_secrets[0], None))


def main() -> None:
    cli()
