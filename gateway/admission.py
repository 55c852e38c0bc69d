"""Request classes and the retry budget.

Priority comes from the `X-Priority` header (`interactive`, the default, or
`batch`); each class has its own completion objective. Retries are allowed
only while they stay under a share of recent requests (20 % by default).
"""

from __future__ import annotations

from backends.clock import Clock
from gateway.errors import InvalidRequestError
from gateway.scheduling.types import Priority
from gateway.settings import GatewaySettings
from gateway.stats import WindowCounter


def parse_priority(header: str | None) -> Priority:
    """The request's class; raises InvalidRequestError for an unknown value."""
    if header is None or not header.strip():
        return Priority.INTERACTIVE
    value = header.strip().lower()
    try:
        return Priority(value)
    except ValueError:
        valid = ", ".join(p.value for p in Priority)
        raise InvalidRequestError(f"X-Priority must be one of: {valid}") from None


def slo_seconds(settings: GatewaySettings, priority: Priority) -> float:
    if priority is Priority.BATCH:
        return settings.slo.batch_seconds
    return settings.slo.interactive_seconds


class RetryBudget:
    """Retries may be at most `ratio` of the requests of the last `window_s` seconds,
    plus `min_per_s` per second so a quiet gateway can still fail over.

    Counting over a window, not over requests in progress, lets a burst of
    failovers draw on the recent history of good traffic (as Finagle's retry
    budget does), while a sustained storm still runs dry.
    """

    def __init__(
        self, ratio: float, min_per_s: float, *, window_s: float = 10.0, clock: Clock
    ) -> None:
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.clock = clock
        self._requests = WindowCounter(window_s)
        self._retries = WindowCounter(window_s)
        self.window_s = window_s
        self.active_requests = 0
        self.denied = 0

    def start_request(self) -> None:
        self.active_requests += 1
        self._requests.add(self.clock.now())

    def end_request(self) -> None:
        self.active_requests -= 1

    def try_retry(self) -> bool:
        """Spend a retry if the budget allows."""
        now = self.clock.now()
        allowed = self.ratio * self._requests.count(now) + self.min_per_s * self.window_s
        if self._retries.count(now) + 1 > allowed:
            self.denied += 1
            return False
        self._retries.add(now)
        return True
