"""What this process has seen of the database: said in the logs once when a worker loses it and
once when it is back (with how long it was gone), and counted in `/metrics`."""

from __future__ import annotations

import logging
import time

from app.metrics import Metrics

log = logging.getLogger(__name__)


class Availability:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._lost_at: dict[str, float] = {}  # by worker: when it last found the database gone

    def lost(self, worker: str, error: BaseException) -> None:
        """`worker` could not reach the database; it tries again by itself."""
        self._metrics.database_unreachable.labels(worker).inc()
        if worker in self._lost_at:
            return
        self._lost_at[worker] = time.monotonic()
        log.warning("%s: the database is unreachable (%r); trying again", worker, error)

    def reached(self, worker: str) -> None:
        """`worker` reached the database."""
        lost_at = self._lost_at.pop(worker, None)
        if lost_at is not None:
            gone = time.monotonic() - lost_at
            log.info("%s: the database is reachable again, after %.1f s", worker, gone)
