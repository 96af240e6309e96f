"""`create_app(settings)`: builds the service. Nothing connects until the lifespan starts."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from types import FrameType
from typing import Any

import httpx
from fastapi import Depends, FastAPI, Response
from fastapi.telemetry import TelemetryConfig
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from app.api import (
    callbacks,
    calls,
    docs,
    events,
    health,
    opt_outs,
    recordings,
    ui,
    webhook_endpoints,
)
from app.api.deps import require_metrics_access
from app.api.errors import install_error_handlers
from app.api.limits import BodySizeLimit
from app.api.request_ids import RequestIds
from app.api.simulator import SimulatorMount
from app.calls.availability import Availability
from app.calls.callback_auth import passthru_url
from app.calls.dispatch import Dispatch, budget_of, connect_request
from app.calls.ingest import CallbackWriter
from app.calls.reconcile import reconcile
from app.calls.retention import forget_unmatched_receipts
from app.calls.spool import Spool
from app.config import Settings
from app.db import tally
from app.db.session import create_engine, create_sessionmaker
from app.events.deliverer import delivering
from app.events.retention import forget_old_events
from app.events.targets import Resolver, TargetPolicy, system_resolver
from app.exotel.client import ExotelClient, Observer
from app.exotel.simulator import SIMULATOR_PREFIX, Simulator, SimulatorConfig
from app.jobs.periodic import Periodic
from app.jobs.runner import Kind, Runner
from app.jobs.worker import Worker
from app.metrics import CONTENT_TYPE, Metrics
from app.recordings.archive import Archive
from app.recordings.retention import forget_old_recordings
from app.recordings.store import RecordingStore
from app.runtime import Runtime

log = logging.getLogger(__name__)

# The service's telemetry is its Prometheus metrics and its logs. FastAPI's own OpenTelemetry
# looks up the environment on every request otherwise (bench/README.md).
_NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def create_app(
    settings: Settings | None = None,
    *,
    exotel_transport: httpx.AsyncBaseTransport | None = None,
    resolver: Resolver = system_resolver,
) -> FastAPI:
    """The service. `exotel_transport` replaces the network to Exotel, `resolver` the DNS that
    finds webhook subscribers (tests pass doubles)."""
    settings = settings or Settings.load()
    simulator = simulator_app = None
    # Never in production: it refuses to start without EXOTEL_API_KEY (Settings).
    if settings.exotel.simulated and exotel_transport is None:
        simulator = Simulator(
            SimulatorConfig(
                callback_delay=settings.simulator.callback_delay_seconds,
                rate_limit=settings.exotel.rate_limit,
                rate_window=settings.exotel.rate_window_seconds,
                flows=settings.simulator.flows,
                outcomes=settings.simulator.outcomes,
                price_delay=settings.simulator.price_delay_seconds,
                passthru_url=passthru_url(
                    settings.callbacks.public_base_url, settings.callbacks.signing_secrets[0]
                ),
                credentials=settings.exotel.credentials,
                # Its callbacks are exocall's own POSTs: to exocall, and nowhere else.
                callbacks_under=settings.callbacks.public_base_url,
            )
        )
        simulator_app = simulator.app(mounted=True)
        exotel_transport = httpx.ASGITransport(app=simulator_app)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _warn_about_development_defaults(settings)
        async with AsyncExitStack() as stack:
            engine = create_engine(settings.database.url, pgbouncer=settings.database.pgbouncer)
            stack.push_async_callback(engine.dispose)
            # Exotel is always reached over TLS with certificate verification (httpx's default).
            http = await stack.enter_async_context(httpx.AsyncClient(follow_redirects=False))
            exotel_http = http
            if exotel_transport is not None:
                exotel_http = await stack.enter_async_context(
                    httpx.AsyncClient(transport=exotel_transport)
                )
            if simulator is not None:
                simulator.bind(http)  # its callbacks are real HTTP POSTs to PUBLIC_BASE_URL
                stack.push_async_callback(simulator.aclose)
            sessionmaker = create_sessionmaker(engine)
            metrics = Metrics()
            availability = Availability(metrics)
            exotel = exotel_client(settings, exotel_http, observe=metrics.observe_exotel)
            budget = budget_of(settings.exotel)
            targets = _targets(settings, resolver)
            webhooks = None
            if settings.webhooks.delivery_in_serve:
                webhooks = await delivering(
                    stack, targets=targets, settings=settings.webhooks, metrics=metrics
                )
            # What callbacks and dispatches commit here is delivered at once, not at the next
            # poll: they write most events.
            deliver_now = webhooks.wake if webhooks else lambda: None
            dispatch = Dispatch(
                sessionmaker=sessionmaker,
                exotel=exotel,
                settings=settings.dispatch,
                budget=budget,
                connect=functools.partial(
                    connect_request, exotel=settings.exotel, callbacks=settings.callbacks
                ),
                lookups=settings.reconcile,
                recorded=deliver_now,
            )
            spool = Spool(settings.callbacks.spool_dir)
            spool.open()
            recording_store = RecordingStore.from_settings(settings.recordings)
            callback_writer = CallbackWriter(
                engine,
                writers=settings.callbacks.writers,
                opt_out_digits=settings.callbacks.passthru_opt_out_digits,
                applied=deliver_now,
            )
            callback_writer.start()
            stack.push_async_callback(callback_writer.stop)
            app.state.runtime = Runtime(
                engine=engine,
                sessionmaker=sessionmaker,
                dispatch=dispatch,
                spool=spool,
                callbacks=callback_writer,
                metrics=metrics,
                targets=targets,
                recordings=recording_store,
            )
            kinds: list[tuple[Kind[Any, Any], float]] = [
                # Calls already sent get the Exotel timeout to be recorded before we exit.
                (dispatch, settings.exotel.timeout_seconds),
                (
                    Periodic(
                        "reconcile",
                        functools.partial(
                            reconcile,
                            sessionmaker=sessionmaker,
                            exotel=exotel,
                            settings=settings.reconcile,
                            budget=budget,
                            metrics=metrics,
                        ),
                        every=settings.reconcile.interval_seconds,
                        at_start=False,
                    ),
                    10,
                ),
                (
                    # What a previous run spooled goes in first.
                    Periodic(
                        "spool replay",
                        functools.partial(
                            spool.replay,
                            engine,
                            opt_out_digits=settings.callbacks.passthru_opt_out_digits,
                        ),
                        every=settings.callbacks.spool_replay_seconds,
                        local=True,
                    ),
                    10,
                ),
                (
                    Periodic("counts", functools.partial(tally.fold, sessionmaker), every=10),
                    10,
                ),
                (
                    Periodic(
                        "event retention",
                        functools.partial(
                            forget_old_events,
                            sessionmaker,
                            days=settings.webhooks.event_retention_days,
                        ),
                        every=3600,
                    ),
                    10,
                ),
                (
                    Periodic(
                        "unmatched callback retention",
                        functools.partial(
                            forget_unmatched_receipts,
                            sessionmaker,
                            days=settings.callbacks.unmatched_retention_days,
                        ),
                        every=3600,
                    ),
                    10,
                ),
            ]
            if settings.recordings.archive:
                archive = Archive(
                    sessionmaker=sessionmaker,
                    exotel=exotel,
                    store=recording_store,
                    settings=settings.recordings,
                    budget=budget,
                    held_dir=settings.callbacks.spool_dir / "recordings",
                    metrics=metrics,
                )
                kinds.append((archive, 10))
            if settings.recordings.retention_days is not None:
                retention = Periodic(
                    "recording retention",
                    functools.partial(
                        forget_old_recordings,
                        sessionmaker,
                        recording_store,
                        days=settings.recordings.retention_days,
                    ),
                    every=3600,
                )
                kinds.append((retention, 10))
            if webhooks is not None:
                kinds.append((webhooks, 5))
            await _run_jobs(
                stack, kinds, sessionmaker, settings, availability, metrics, dispatch.stop_waiting
            )
            yield

    app = FastAPI(
        title="exocall",
        summary="Place Exotel calls and keep their state.",
        version="0.1.0",
        lifespan=lifespan,
        telemetry=_NO_TELEMETRY,
        # `/docs` is `docs.router`'s, from files of our own: FastAPI's loads them from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    install_error_handlers(app)
    # Each added layer wraps the ones before: the proxy's view of the client comes first.
    app.add_middleware(BodySizeLimit, limit=settings.service.max_body_bytes)
    app.add_middleware(RequestIds)
    if settings.service.trusted_proxies:
        # The client address (and scheme) as the trusted proxies saw it, for the callback
        # allowlist and the logs. `exocall serve` leaves uvicorn's own proxy handling off.
        app.add_middleware(
            ProxyHeadersMiddleware,
            trusted_hosts=[str(network) for network in settings.service.trusted_proxies],
        )

    # Exotel's callbacks first: the busiest routes are matched before any other.
    callbacks.add_routes(app.router)
    app.include_router(calls.router)
    app.include_router(recordings.router)
    app.include_router(calls.batches)
    app.include_router(opt_outs.router)
    app.include_router(events.router)
    app.include_router(webhook_endpoints.router)
    app.include_router(health.router)
    app.include_router(ui.router)
    app.include_router(docs.router)
    if simulator_app is not None:
        # Reachable by hand too, with an API key: curl -H "Authorization: Bearer $KEY"
        # $PUBLIC_BASE_URL/_simulator/v1/Accounts/simulated/Calls.json
        app.mount(SIMULATOR_PREFIX, SimulatorMount(simulator_app, settings))
    return app


def create_deliverer_app(
    settings: Settings | None = None, *, resolver: Resolver = system_resolver
) -> FastAPI:
    """`exocall deliver`: a deliverer and nothing else, beside `exocall serve` replicas run with
    WEBHOOK_DELIVERY_IN_SERVE=false, so that sending webhooks takes no CPU from the API. Any
    number may run; they claim from the database as the replicas' own deliverers do. Serves
    `/healthz` and this process's `/metrics` (deliveries by outcome)."""
    settings = settings or Settings.load()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            engine = create_engine(settings.database.url, pgbouncer=settings.database.pgbouncer)
            stack.push_async_callback(engine.dispose)
            sessionmaker = create_sessionmaker(engine)
            metrics = app.state.metrics
            webhooks = await delivering(
                stack,
                targets=_targets(settings, resolver),
                settings=settings.webhooks,
                metrics=metrics,
            )
            # Nothing else waits on this process: what is in flight gets its whole time.
            grace = settings.webhooks.timeout_seconds
            await _run_jobs(
                stack, [(webhooks, grace)], sessionmaker, settings, Availability(metrics), metrics
            )
            yield

    app = FastAPI(
        title="exocall deliverer",
        lifespan=lifespan,
        telemetry=_NO_TELEMETRY,
        docs_url=None,  # `docs.router`'s, as the API's
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    install_error_handlers(app)
    app.include_router(docs.router)

    app.add_api_route("/healthz", health.healthz, summary="The process is alive")

    @app.get(
        "/metrics",
        summary="This process's counts (Prometheus text)",
        response_class=Response,
        dependencies=[Depends(require_metrics_access)],
    )
    async def metrics() -> Response:
        return Response(app.state.metrics.render(None), media_type=CONTENT_TYPE)

    return app


async def _run_jobs(
    stack: AsyncExitStack,
    kinds: list[tuple[Kind[Any, Any], float]],
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    availability: Availability,
    metrics: Metrics,
    *also_on_exit: Callable[[], None],
) -> None:
    """A runner for each kind (with its grace at shutdown), and this process's worker, until
    `stack` closes. On SIGTERM every runner stops claiming at once; at the close they stop
    together, and the worker last."""
    # The heartbeat has a connection of its own: a busy pool must not make a live worker look
    # dead to the others.
    beats = create_engine(
        settings.database.url, pgbouncer=settings.database.pgbouncer, pool_size=1, max_overflow=0
    )
    stack.push_async_callback(beats.dispose)
    worker = Worker(
        create_sessionmaker(beats),
        beat_seconds=settings.jobs.beat_seconds,
        lease_seconds=settings.jobs.lease_seconds,
    )
    await worker.start()
    stack.push_async_callback(worker.stop)
    runners = [
        Runner(
            kind,
            sessionmaker=sessionmaker,
            worker=worker,
            poll=min(kind.every, settings.jobs.beat_seconds)
            if isinstance(kind, Periodic)
            else settings.jobs.poll_seconds,
            grace=grace,
            availability=availability,
            metrics=metrics,
        )
        for kind, grace in kinds
    ]
    for runner in runners:
        runner.start()

    async def stop() -> None:
        await asyncio.gather(*(runner.stop() for runner in runners))

    stack.push_async_callback(stop)

    def stop_claiming() -> None:
        for runner in runners:
            runner.stop_claiming()
        for callback in also_on_exit:
            callback()

    stack.enter_context(_on_exit_signal(stop_claiming))


def _targets(settings: Settings, resolver: Resolver) -> TargetPolicy:
    """Where webhooks may go (WEBHOOK_ALLOWED_TARGETS)."""
    return TargetPolicy.from_settings(
        settings.webhooks.allowed_targets,
        production=settings.service.production,
        resolver=resolver,
    )


@contextmanager
def _on_exit_signal(callback: Callable[[], None]) -> Iterator[None]:
    """Run `callback` in the event loop as soon as SIGTERM or SIGINT arrives, then hand the
    signal on to the server's own handler. uvicorn answers the requests in flight before it
    runs the app's shutdown; the dispatcher must stop claiming calls at once, not after them.
    Outside a server that handles these signals itself, this does nothing."""
    signals = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.getsignal(sig) for sig in signals}
    handlers = [handler for handler in previous.values() if callable(handler)]
    if threading.current_thread() is not threading.main_thread() or len(handlers) < 2:
        yield
        return
    loop = asyncio.get_running_loop()

    def handle(sig: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(callback)
        handler = previous[signal.Signals(sig)]
        assert callable(handler)
        handler(sig, frame)

    for sig in signals:
        signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exotel_client(
    settings: Settings, http: httpx.AsyncClient, *, observe: Observer | None = None
) -> ExotelClient:
    base_url = "http://simulator" if settings.exotel.simulated else settings.exotel.base_url
    api_key, api_token = settings.exotel.credentials
    return ExotelClient(
        http,
        base_url=base_url,
        account_sid=settings.exotel.account,
        api_key=api_key,
        api_token=api_token,
        timeout_seconds=settings.exotel.timeout_seconds,
        recording_hosts=settings.recordings.url_hosts,
        observe=observe,
    )


def _warn_about_development_defaults(settings: Settings) -> None:
    if settings.exotel.simulated:
        log.warning(
            "EXOTEL_API_KEY is not set: calls go to the built-in simulator, nobody is phoned"
        )
    if not settings.service.api_keys:
        log.warning(
            "API_KEYS is not set: the internal API (/calls, /batches) is open to anyone who can "
            "reach this service; set API_KEYS before exposing it"
        )
    if not settings.callbacks.secrets:
        log.warning(
            "CALLBACK_SECRETS is not set: status callback URLs are signed with a development "
            "secret that anyone can read; set CALLBACK_SECRETS before exposing this service"
        )
