"""Prometheus metrics, served at `/metrics`.

What this process did (callbacks, Exotel requests, waiting for the budget, reconciliation) is
counted here as it happens. What every replica shares (calls by status, the queue) is read from
the database at each scrape instead: any replica answers with the same, whole figures.

With several worker processes (`exocall serve --workers N`), prometheus-client keeps each
worker's counts in files under PROMETHEUS_MULTIPROC_DIR, which `serve` sets, and the scrape adds
them up whichever worker answers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from app.jobs.worker import Backlog

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Gauges:
    """What every replica shares, read from the database at the scrape."""

    calls_by_status: Mapping[str, int]
    jobs: Mapping[str, Backlog]  # by kind
    # Per webhook endpoint id: deliveries owed, and the age of the oldest of them.
    webhook_backlog: Mapping[str, tuple[int, float]]
    # The recordings archive (app.recordings.status).
    recordings_by_status: Mapping[str, int]
    recordings_paused: bool


class Metrics:
    """The counters of one app, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.callbacks = Counter(
            "exocall_callbacks_received",
            "Status callbacks received, by what they did: an EventOutcome (applied, duplicate, "
            "stale, unknown_sid, unreadable, ...), spooled (the database was down) or rejected "
            "(refused).",
            ["outcome"],
            registry=self.registry,
        )
        self.exotel_requests = Counter(
            "exocall_exotel_requests",
            "Requests to Exotel, by operation and HTTP status ('none': no answer came).",
            ["operation", "status"],
            registry=self.registry,
        )
        self.exotel_seconds = Histogram(
            "exocall_exotel_request_duration_seconds",
            "Time Exotel took to answer, by operation.",
            ["operation"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.jobs = Counter(
            "exocall_jobs",
            "Jobs run (app.jobs), by kind (dispatch, delivery, archive, reconcile, ...) and "
            "outcome: done (what came of it recorded) or lost (its outcome never recorded: the "
            "kind decides what that means).",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.job_wait = Counter(
            "exocall_jobs_wait_seconds",
            "Time a kind of job held back work that was ready, by kind: dispatch while the "
            "account's budget was spent.",
            ["kind"],
            registry=self.registry,
        )
        self.reconcile_repairs = Counter(
            "exocall_reconcile_repairs",
            "What reconciliation did, by kind (repaired, not_dialled, attached, priced: attempts "
            "whose price it learnt).",
            ["kind"],
            registry=self.registry,
        )
        # A counter, as Prometheus has for what only grows: `increase()` over it is the spend
        # of any hour or day, across replicas and restarts. A gauge of the table's sum would
        # read every call at each scrape.
        self.call_price = Counter(
            "exocall_call_price_inr",
            "What Exotel charged for calls, in INR, counted as reconciliation learns each "
            "attempt's price (Exotel fills it in minutes after the attempt ended).",
            registry=self.registry,
        )

        self.webhook_deliveries = Counter(
            "exocall_webhook_deliveries",
            "Webhook delivery attempts, by outcome: delivered, failed (to be retried), given_up "
            "(the schedule ran out, or the endpoint answered 410).",
            ["outcome"],
            registry=self.registry,
        )
        self.recording_fetches = Counter(
            "exocall_recording_archive",
            "Recordings the archive worked on, by what came of it: archived, retried (a fetch "
            "to try again), store_down (fetched, the store to try again), refused (Exotel "
            "refused the credentials: the archive pauses), expired, failed.",
            ["outcome"],
            registry=self.registry,
        )
        self.database_unreachable = Counter(
            "exocall_database_unreachable",
            "Times a kind of work (dispatch, delivery, archive, reconcile, spool replay, ...) "
            "found the database unreachable; each tries again by itself.",
            ["worker"],
            registry=self.registry,
        )

    def observe_exotel(self, operation: str, status: int | None, seconds: float) -> None:
        self.exotel_requests.labels(operation, str(status) if status else "none").inc()
        self.exotel_seconds.labels(operation).observe(seconds)

    def count_repairs(self, repairs: Mapping[str, int]) -> None:
        for kind, count in repairs.items():
            if count:
                self.reconcile_repairs.labels(kind).inc(count)

    def count_charged(self, amount: Decimal) -> None:
        if amount:
            self.call_price.inc(float(amount))

    def render(self, gauges: Gauges | None) -> bytes:
        """The text exposition: this process's counts (every worker's, with several) and the
        shared state, just read (None: the database could not be read)."""
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        else:
            registry = self.registry
        text = generate_latest(registry)
        if gauges is not None:
            shared = CollectorRegistry(auto_describe=False)
            shared.register(_SharedCollector(gauges))
            text += generate_latest(shared)
        return text


class _SharedCollector(Collector):
    def __init__(self, gauges: Gauges) -> None:
        self._gauges = gauges

    def collect(self) -> Iterable[GaugeMetricFamily]:
        calls = GaugeMetricFamily(
            "exocall_calls", "Calls in the database, by status.", labels=["status"]
        )
        for status, count in sorted(self._gauges.calls_by_status.items()):
            calls.add_metric([status], count)
        yield calls
        due = GaugeMetricFamily(
            "exocall_jobs_due",
            "Work due and not claimed, by kind (dispatch: calls ready to be sent; delivery, "
            "archive, and each periodic job).",
            labels=["kind"],
        )
        running = GaugeMetricFamily(
            "exocall_jobs_running", "Work claimed by a worker, by kind.", labels=["kind"]
        )
        oldest = GaugeMetricFamily(
            "exocall_jobs_oldest_due_age_seconds",
            "How long the work due the longest has waited past its time, by kind (0: none).",
            labels=["kind"],
        )
        for kind, work in sorted(self._gauges.jobs.items()):
            due.add_metric([kind], work.due)
            running.add_metric([kind], work.running)
            oldest.add_metric([kind], work.oldest_due_age_seconds)
        yield due
        yield running
        yield oldest
        backlog = GaugeMetricFamily(
            "exocall_webhook_backlog",
            "Deliveries owed to each webhook endpoint (pending or in flight).",
            labels=["endpoint"],
        )
        oldest = GaugeMetricFamily(
            "exocall_webhook_oldest_undelivered_age_seconds",
            "How long the oldest event owed to each webhook endpoint has waited.",
            labels=["endpoint"],
        )
        for endpoint, (count, age) in sorted(self._gauges.webhook_backlog.items()):
            backlog.add_metric([endpoint], count)
            oldest.add_metric([endpoint], age)
        yield backlog
        yield oldest
        recordings = GaugeMetricFamily(
            "exocall_recordings",
            "Calls' recordings by where they stand in the archive: pending, archived, failed, "
            "expired, deleted.",
            labels=["status"],
        )
        for status, count in sorted(self._gauges.recordings_by_status.items()):
            recordings.add_metric([status], count)
        yield recordings
        yield GaugeMetricFamily(
            "exocall_recordings_paused",
            "1 while the archive is paused because Exotel refused the credentials (alert on it).",
            value=int(self._gauges.recordings_paused),
        )
