"""Request classes and the retry budget.

Priority comes from the `X-Priority` header (`interactive`, the default, or
`batch`); each class has its own completion objective. Retries are allowed
only while the retries in progress stay under a share of the requests in
progress (Envoy's retry budget: 20 %, at least 3 at once by default).
"""

from __future__ import annotations

from gateway.errors import InvalidRequestError
from gateway.scheduling.types import Priority
from gateway.settings import GatewaySettings


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
    """Caps concurrent retries at `ratio` of concurrent requests (at least `min_concurrent`)."""

    def __init__(self, ratio: float, min_concurrent: int) -> None:
        self.ratio = ratio
        self.min_concurrent = min_concurrent
        self.active_requests = 0
        self.active_retries = 0
        self.denied = 0

    def start_request(self) -> None:
        self.active_requests += 1

    def end_request(self) -> None:
        self.active_requests -= 1

    def try_retry(self) -> bool:
        """Take a retry token if the budget allows; pair with `end_retry`."""
        allowed = max(self.min_concurrent, self.ratio * self.active_requests)
        if self.active_retries + 1 > allowed:
            self.denied += 1
            return False
        self.active_retries += 1
        return True

    def end_retry(self) -> None:
        self.active_retries -= 1
