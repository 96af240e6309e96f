"""When to try again: the one retry policy every kind's failures are scheduled by."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

# The service's own generator: the random module's shared one belongs to whatever else runs in the
# process, and a draw here would move it under them (Hypothesis, in the tests, fails a draw of
# its own that the app's work moved meanwhile).
RANDOM = random.Random()  # noqa: S311


@dataclass(frozen=True)
class RetryPolicy:
    """`delays[n - 1]` seconds after the n-th failed attempt (the last delay repeats), each moved
    by up to ±`jitter` of itself; given up once `max_attempts` attempts have failed (never, when
    None). A server's Retry-After (read and clamped by `app.retry_after`) is honoured as it is,
    or, `retry_after_within_schedule`, between one and two scheduled delays (Svix's rule, for
    servers we do not answer to). An answer that says "slow down" waits at least
    `slow_down_floor` (or the longest delay, if shorter)."""

    delays: Sequence[float]
    max_attempts: int | None = None
    jitter: float = 0.0
    slow_down_floor: float = 0.0
    retry_after_within_schedule: bool = False

    @classmethod
    def doubling(cls, first: float, longest: float, *, max_attempts: int | None) -> RetryPolicy:
        """first, 2·first, 4·first, ... up to `longest`."""
        delays = [first]
        while delays[-1] * 2 < longest:
            delays.append(delays[-1] * 2)
        return cls([*delays, longest], max_attempts=max_attempts)

    def gives_up(self, attempts: int) -> bool:
        """Whether `attempts` failed attempts are all there will be."""
        return self.max_attempts is not None and attempts >= self.max_attempts

    def delay(
        self, attempts: int, *, retry_after: float | None = None, slow_down: bool = False
    ) -> float:
        """Seconds to wait after `attempts` failed attempts."""
        scheduled = self.delays[min(max(attempts, 1), len(self.delays)) - 1]
        if retry_after is not None:
            if not self.retry_after_within_schedule:
                return retry_after
            return min(max(retry_after, scheduled), 2 * scheduled)
        delay = scheduled * RANDOM.uniform(1 - self.jitter, 1 + self.jitter)
        if slow_down:
            delay = max(delay, min(self.slow_down_floor, max(self.delays)))
        return delay
