"""Request classes and the retry budget, on a manual clock."""

from __future__ import annotations

import os

import pytest

from backends.clock import ManualClock
from gateway.admission import RetryBudget, parse_priority, slo_seconds
from gateway.errors import InvalidRequestError
from gateway.scheduling.types import Priority
from gateway.settings import settings_from_dict

POOLS = [
    {
        "name": "inf2",
        "accelerator": "inf2.xlarge",
        "price_per_hour": 0.7582,
        "replicas": ["http://127.0.0.1:9001"],
    }
]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """GATEWAY_* variables beat the settings mapping; the developer's must not leak in."""
    for name in list(os.environ):
        if name.upper().startswith("GATEWAY_"):
            monkeypatch.delenv(name)


# Priority and SLO --------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(None, Priority.INTERACTIVE, id="absent"),
        pytest.param("", Priority.INTERACTIVE, id="empty"),
        pytest.param("   ", Priority.INTERACTIVE, id="blank"),
        pytest.param("interactive", Priority.INTERACTIVE, id="interactive"),
        pytest.param("batch", Priority.BATCH, id="batch"),
        pytest.param("BATCH", Priority.BATCH, id="upper-case"),
        pytest.param(" Batch\t", Priority.BATCH, id="mixed-case-padded"),
        pytest.param("Interactive", Priority.INTERACTIVE, id="capitalised"),
    ],
)
def test_parse_priority(header: str | None, expected: Priority) -> None:
    assert parse_priority(header) is expected


@pytest.mark.parametrize("header", ["urgent", "batchy", "0", "interactive,batch"])
def test_unknown_priority_names_the_valid_values(header: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_priority(header)
    assert info.value.message == "X-Priority must be one of: interactive, batch"
    assert info.value.status == 422


@pytest.mark.parametrize(
    ("slo", "priority", "expected_s"),
    [
        pytest.param({}, Priority.INTERACTIVE, 2.0, id="interactive-default"),
        pytest.param({}, Priority.BATCH, 60.0, id="batch-default"),
        pytest.param({"interactive_seconds": 1.5}, Priority.INTERACTIVE, 1.5, id="interactive"),
        pytest.param({"batch_seconds": 30}, Priority.BATCH, 30.0, id="batch"),
        pytest.param({"batch_seconds": 30}, Priority.INTERACTIVE, 2.0, id="classes-apart"),
    ],
)
def test_slo_seconds_per_class(
    slo: dict[str, float], priority: Priority, expected_s: float
) -> None:
    settings = settings_from_dict({"pools": POOLS, "slo": slo})
    assert slo_seconds(settings, priority) == expected_s


# Retry budget ------------------------------------------------------------------


def spend(budget: RetryBudget, tries: int) -> int:
    """Ask for `tries` retries; how many were allowed."""
    return sum(budget.try_retry() for _ in range(tries))


@pytest.mark.parametrize(
    ("min_per_s", "window_s", "expected_retries"),
    [
        pytest.param(0.5, 10.0, 5, id="half-a-second"),
        pytest.param(3.0, 10.0, 30, id="defaults"),
        pytest.param(1.0, 4.0, 4, id="short-window"),
        pytest.param(0.0, 10.0, 0, id="none"),
    ],
)
def test_retry_budget_when_idle(min_per_s: float, window_s: float, expected_retries: int) -> None:
    budget = RetryBudget(0.2, min_per_s, window_s=window_s, clock=ManualClock(100.0))
    assert spend(budget, expected_retries + 5) == expected_retries
    assert budget.denied == 5


@pytest.mark.parametrize(
    ("ratio", "min_per_s", "requests", "expected_retries"),
    [
        pytest.param(0.2, 0.0, 10, 2, id="ratio-of-requests"),
        pytest.param(0.2, 0.0, 100, 20, id="ratio-of-more-requests"),
        pytest.param(0.5, 0.0, 9, 4, id="whole-retries-only"),
        pytest.param(0.2, 0.5, 10, 7, id="ratio-plus-minimum"),
        pytest.param(0.0, 0.0, 50, 0, id="no-retries"),
    ],
)
def test_retry_budget_follows_recent_requests(
    ratio: float, min_per_s: float, requests: int, expected_retries: int
) -> None:
    budget = RetryBudget(ratio, min_per_s, window_s=10.0, clock=ManualClock(100.0))
    for _ in range(requests):
        budget.start_request()
    assert spend(budget, expected_retries + 3) == expected_retries
    assert budget.denied == 3


def test_retry_budget_counts_requests_across_the_window() -> None:
    clock = ManualClock(100.0)
    budget = RetryBudget(0.2, 0.0, window_s=10.0, clock=clock)
    for _ in range(10):
        budget.start_request()
    assert spend(budget, 3) == 2
    clock.advance(5.0)
    for _ in range(10):
        budget.start_request()
    # Twenty requests in the window allow four retries; two are spent.
    assert spend(budget, 3) == 2
    assert budget.denied == 2


def test_retry_budget_recovers_when_the_window_slides() -> None:
    clock = ManualClock(100.0)
    budget = RetryBudget(0.2, 0.5, window_s=10.0, clock=clock)
    assert spend(budget, 6) == 5
    clock.advance(5.0)
    assert not budget.try_retry()  # the spent retries are still in the window
    # One-second buckets: spent retries leave once their whole second is out of the window.
    clock.advance(6.0)
    assert spend(budget, 6) == 5
    assert budget.denied == 3


def test_retry_budget_forgets_old_requests() -> None:
    clock = ManualClock(100.0)
    budget = RetryBudget(0.5, 0.0, window_s=10.0, clock=clock)
    for _ in range(10):
        budget.start_request()
    clock.advance(11.0)
    assert not budget.try_retry()
    assert budget.denied == 1


def test_retry_budget_tracks_active_requests() -> None:
    budget = RetryBudget(0.2, 0.0, clock=ManualClock())
    budget.start_request()
    budget.start_request()
    budget.end_request()
    assert budget.active_requests == 1
    # Ending a request does not take it out of the window the ratio is drawn from.
    budget.end_request()
    for _ in range(3):
        budget.start_request()
    assert spend(budget, 2) == 1
