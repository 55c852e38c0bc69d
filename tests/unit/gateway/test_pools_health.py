"""Pool and replica live state and the health rules, on a manual clock.

A registry of three pools (inf2 with two replicas, g5 and g6 with one) is built from a
settings mapping; nothing is contacted. Time moves only by `ManualClock.advance`; the
`probe_all` tests use real asyncio with a tiny probe timeout.
"""

from __future__ import annotations

import asyncio
import math
import os
from dataclasses import dataclass, field
from typing import Any

import pytest

from backends.clock import ManualClock
from gateway.health import MAX_CAPACITY_HOLD_S, Failure, HealthTracker
from gateway.pools import (
    DEMAND_MIN_SPAN_S,
    LATENCY_RELAX_TAU_S,
    LATENCY_STALE_AFTER_S,
    PoolRegistry,
    ReplicaState,
)
from gateway.scheduling.types import CapacityState
from gateway.settings import GatewaySettings, settings_from_dict

INF2_A = "http://127.0.0.1:9001"
INF2_B = "http://127.0.0.1:9002"
G5 = "http://127.0.0.1:9003"
G6 = "http://127.0.0.1:9004"
ALL_URLS = (INF2_A, INF2_B, G5, G6)

POOLS: list[dict[str, Any]] = [
    {
        "name": "inf2",
        "accelerator": "inf2.xlarge",
        "price_per_hour": 0.7582,
        "expected_latency_seconds": 0.67,
        "shapes": ["512x512"],
        "replicas": [INF2_A, INF2_B],
    },
    {
        "name": "g5",
        "accelerator": "g5.xlarge",
        "price_per_hour": 1.006,
        "expected_latency_seconds": 1.0,
        "replicas": [G5],
    },
    {
        "name": "g6",
        "accelerator": "g6.xlarge",
        "price_per_hour": 0.8048,
        "slots_per_replica": 2,
        "replicas": [G6],
    },
]

# Every value a test relies on is spelled out, so a change of default does not move them.
BASE: dict[str, Any] = {
    "outlier_consecutive_failures": 3,
    "outlier_base_ejection_s": 30.0,
    "outlier_max_ejection_s": 300.0,
    "outlier_max_ejected_share": 0.5,
    "capacity_hold_s": 5.0,
    "slow_start_s": 10.0,
    "unhealthy_threshold": 2,
    "healthy_threshold": 2,
    "probe_interval_s": 2.0,
    "probe_timeout_s": 1.0,
    "rate_window_s": 10.0,
    "ewma_alpha": 0.2,
    "target_utilization": 0.8,
}

START_S = 1000.0


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """GATEWAY_* variables beat the settings mapping; the developer's must not leak in."""
    for name in list(os.environ):
        if name.upper().startswith("GATEWAY_"):
            monkeypatch.delenv(name)


@dataclass
class Rig:
    """A registry and health tracker sharing one manual clock; ejections are recorded."""

    settings: GatewaySettings
    clock: ManualClock
    registry: PoolRegistry
    health: HealthTracker
    ejections: list[tuple[str, str]] = field(default_factory=list)

    def replica(self, url: str) -> ReplicaState:
        return next(r for r in self.registry.replicas() if r.url == url)

    def fail(self, url: str, failure: Failure, times: int = 1) -> None:
        for _ in range(times):
            self.health.record_failure(self.replica(url), failure, "test")

    def succeed(self, url: str, times: int = 1) -> None:
        for _ in range(times):
            self.health.record_success(self.replica(url))

    def probe(self, url: str, ready: bool, times: int = 1, depth: int | None = None) -> None:
        for _ in range(times):
            self.health.record_probe(self.replica(url), ready, depth)

    def healthy(self) -> dict[str, bool]:
        now = self.clock.now()
        return {r.url: r.healthy(now) for r in self.registry.replicas()}


def make_rig(**overrides: Any) -> Rig:
    settings = settings_from_dict({"pools": POOLS, **BASE, **overrides})
    clock = ManualClock(START_S)
    registry = PoolRegistry(settings, clock)
    for replica in registry.replicas():
        replica.probed = True  # as after the gateway's start-up probe round
    rig = Rig(settings, clock, registry, HealthTracker(registry, settings, clock))
    rig.health.on_eject = lambda replica, reason: rig.ejections.append((replica.url, reason))
    return rig


# Passive outlier ejection ------------------------------------------------------


@pytest.mark.parametrize("failure", [Failure.TIMEOUT, Failure.SERVER_ERROR], ids=str)
def test_consecutive_failures_eject(failure: Failure) -> None:
    rig = make_rig()
    rig.fail(INF2_A, failure, times=2)
    assert rig.replica(INF2_A).healthy(rig.clock.now())
    assert rig.ejections == []

    rig.fail(INF2_A, failure)
    replica = rig.replica(INF2_A)
    assert not replica.healthy(rig.clock.now())
    assert replica.ejected_until == START_S + 30.0
    assert replica.ejections == 1
    assert rig.ejections == [(INF2_A, "3 consecutive failures")]
    # Ejection starts a clean record.
    assert (replica.consecutive_failures, len(replica.outcomes)) == (0, 0)
    assert replica.last_error == f"{failure.value}: test"


def test_success_breaks_a_run_of_failures() -> None:
    rig = make_rig()
    rig.fail(INF2_A, Failure.TIMEOUT, times=2)
    rig.succeed(INF2_A)
    rig.fail(INF2_A, Failure.TIMEOUT, times=2)
    assert rig.replica(INF2_A).consecutive_failures == 2
    assert rig.healthy()[INF2_A]
    assert rig.ejections == []


@pytest.mark.parametrize(
    ("outcomes", "ejected"),
    [
        # S: success, F: failure; at most two failures in a row, under the threshold of 3.
        pytest.param("SFSFSF", True, id="half-of-six"),
        pytest.param("SSSFFSFF", True, id="four-of-eight"),
        pytest.param("FSFSF", False, id="too-few-to-trust"),
        pytest.param("SSFSFSF", False, id="three-of-seven"),
        pytest.param("SSSSSSFF", False, id="two-of-eight"),
    ],
)
def test_failure_share_ejects(outcomes: str, ejected: bool) -> None:
    rig = make_rig()
    for outcome in outcomes:
        if outcome == "S":
            rig.succeed(INF2_A)
        else:
            rig.fail(INF2_A, Failure.SERVER_ERROR)
    assert rig.replica(INF2_A).ejected(rig.clock.now()) is ejected
    assert [url for url, _ in rig.ejections] == ([INF2_A] if ejected else [])
    if ejected:
        assert rig.ejections[0][1].endswith("of recent requests failed")


def test_connect_error_ejects_at_once() -> None:
    rig = make_rig()
    rig.fail(G5, Failure.CONNECT)
    assert rig.replica(G5).ejected_until == START_S + 30.0
    assert rig.ejections == [(G5, "connection failed")]


def test_ejection_lasts_its_duration() -> None:
    rig = make_rig()
    rig.fail(G5, Failure.CONNECT)
    rig.clock.advance(29.5)
    assert not rig.healthy()[G5]
    rig.clock.advance(0.5)
    assert rig.healthy()[G5]


@pytest.mark.parametrize(
    ("base_s", "max_s", "durations_s"),
    [
        pytest.param(30.0, 300.0, [30.0, 60.0, 90.0, 120.0], id="grows-linearly"),
        pytest.param(30.0, 75.0, [30.0, 60.0, 75.0, 75.0], id="capped"),
        pytest.param(10.0, 10.0, [10.0, 10.0, 10.0], id="cap-equals-base"),
    ],
)
def test_ejection_duration_grows_with_repeats(
    base_s: float, max_s: float, durations_s: list[float]
) -> None:
    rig = make_rig(outlier_base_ejection_s=base_s, outlier_max_ejection_s=max_s)
    seen = []
    for _ in durations_s:
        rig.fail(G5, Failure.CONNECT)
        replica = rig.replica(G5)
        seen.append(replica.ejected_until - rig.clock.now())
        rig.clock.advance(replica.ejected_until - rig.clock.now() + 1.0)
    assert seen == pytest.approx(durations_s)
    assert rig.replica(G5).ejections == len(durations_s)


def test_failure_while_ejected_does_not_extend_the_ejection() -> None:
    rig = make_rig()
    rig.fail(G5, Failure.CONNECT)
    rig.clock.advance(10.0)
    rig.fail(G5, Failure.CONNECT)
    assert rig.replica(G5).ejected_until == START_S + 30.0
    assert rig.replica(G5).ejections == 1
    assert len(rig.ejections) == 1


@pytest.mark.parametrize(
    ("share", "expected_ejected"),
    [
        # Four replicas in all; one ejection is always allowed.
        pytest.param(0.0, 1, id="zero-still-allows-one"),
        pytest.param(0.25, 1, id="quarter"),
        pytest.param(0.5, 2, id="half"),
        pytest.param(0.75, 3, id="three-quarters"),
        pytest.param(1.0, 4, id="all"),
    ],
)
def test_max_ejected_share_is_global(share: float, expected_ejected: int) -> None:
    rig = make_rig(outlier_max_ejected_share=share)
    # One replica of each pool first: the cap counts every pool's replicas together.
    for url in (G5, G6, INF2_A, INF2_B):
        rig.fail(url, Failure.CONNECT)
    expected = [G5, G6, INF2_A, INF2_B][:expected_ejected]
    assert [url for url, _ in rig.ejections] == expected
    assert {url for url, ok in rig.healthy().items() if not ok} == set(expected)


def test_ejection_refused_at_the_cap_is_allowed_once_another_ends() -> None:
    rig = make_rig(outlier_max_ejected_share=0.25)
    rig.fail(G5, Failure.CONNECT)
    rig.clock.advance(1.0)
    rig.fail(G6, Failure.CONNECT)
    assert rig.healthy()[G6]
    assert rig.replica(G6).ejections == 0

    rig.clock.advance(29.0)  # G5's ejection is over
    rig.fail(G6, Failure.CONNECT)
    assert not rig.healthy()[G6]
    assert rig.healthy()[G5]


# Capacity errors ---------------------------------------------------------------


def test_capacity_errors_are_not_failures() -> None:
    rig = make_rig()
    rig.fail(G5, Failure.CAPACITY, times=10)
    replica, pool = rig.replica(G5), rig.registry.get("g5")
    assert replica.healthy(rig.clock.now())
    assert (replica.consecutive_failures, len(replica.outcomes), replica.ejections) == (0, 0, 0)
    assert rig.ejections == []
    assert pool.errors.count(rig.clock.now()) == 0
    assert pool.capacity_errors.count(rig.clock.now()) == 10
    assert replica.last_error == "capacity: test"


@pytest.mark.parametrize(
    ("hold_s", "still_constrained_at_s"),
    [pytest.param(5.0, 4.5, id="default"), pytest.param(12.0, 11.5, id="longer")],
)
def test_capacity_error_constrains_the_pool_for_the_hold(
    hold_s: float, still_constrained_at_s: float
) -> None:
    rig = make_rig(capacity_hold_s=hold_s)
    pool = rig.registry.get("g5")
    rig.fail(G5, Failure.CAPACITY)
    assert pool.capacity_state(rig.clock.now()) is CapacityState.CONSTRAINED
    rig.clock.advance(still_constrained_at_s)
    assert pool.capacity_state(rig.clock.now()) is CapacityState.CONSTRAINED
    rig.clock.advance(hold_s - still_constrained_at_s)
    assert pool.capacity_state(rig.clock.now()) is CapacityState.AVAILABLE
    # Only the pool that answered is constrained.
    assert rig.registry.get("g6").capacity_state(rig.clock.now()) is CapacityState.AVAILABLE


def test_capacity_hold_zero_never_constrains() -> None:
    rig = make_rig(capacity_hold_s=0.0)
    rig.fail(G5, Failure.CAPACITY)
    assert rig.registry.get("g5").capacity_state(rig.clock.now()) is CapacityState.AVAILABLE


@pytest.mark.parametrize(
    ("retry_after_s", "expected_hold_s"),
    [
        pytest.param(2.0, 5.0, id="shorter-than-hold"),
        pytest.param(12.0, 12.0, id="extends-hold"),
        pytest.param(30.0, 30.0, id="at-cap"),
        pytest.param(120.0, MAX_CAPACITY_HOLD_S, id="capped"),
    ],
)
def test_retry_after_extends_the_constrained_period(
    retry_after_s: float, expected_hold_s: float
) -> None:
    rig = make_rig()
    rig.fail(G5, Failure.CAPACITY)
    rig.health.note_retry_after(rig.replica(G5), retry_after_s)
    assert rig.registry.get("g5").constrained_until == pytest.approx(START_S + expected_hold_s)


def test_shorter_retry_after_does_not_shorten_the_constrained_period() -> None:
    rig = make_rig()
    rig.health.note_retry_after(rig.replica(G5), 20.0)
    rig.clock.advance(1.0)
    rig.fail(G5, Failure.CAPACITY)
    rig.health.note_retry_after(rig.replica(G5), 6.0)
    assert rig.registry.get("g5").constrained_until == START_S + 20.0


# Not ready and active probes ---------------------------------------------------


def test_not_ready_takes_the_replica_out_until_probes_succeed() -> None:
    rig = make_rig(healthy_threshold=2)
    rig.fail(G5, Failure.NOT_READY)
    replica = rig.replica(G5)
    assert not replica.healthy(rig.clock.now())
    assert replica.ejections == 0  # out of rotation, not ejected: no ejection to wait out
    assert rig.ejections == []
    rig.clock.advance(3600.0)
    assert not replica.healthy(rig.clock.now())

    rig.probe(G5, ready=True)
    assert not replica.healthy(rig.clock.now())
    rig.probe(G5, ready=True)
    assert replica.healthy(rig.clock.now())


def test_not_ready_forgets_earlier_good_probes() -> None:
    rig = make_rig(healthy_threshold=2)
    rig.probe(G5, ready=True, times=5)
    rig.fail(G5, Failure.NOT_READY)
    rig.probe(G5, ready=True)
    assert not rig.healthy()[G5]


@pytest.mark.parametrize(
    ("unhealthy_threshold", "healthy_threshold", "probes", "expected"),
    [
        # probes: '+' ready, '-' not ready; expected: the replica's state after each, U/D.
        pytest.param(2, 2, "-+-+", "UUUU", id="failures-not-in-a-row"),
        pytest.param(2, 2, "--++", "UDDU", id="down-after-two-up-after-two"),
        pytest.param(1, 3, "-++-+++", "DDDDDDU", id="a-failure-restarts-the-count"),
        pytest.param(3, 1, "---+", "UUDU", id="up-after-one"),
    ],
)
def test_probe_thresholds(
    unhealthy_threshold: int, healthy_threshold: int, probes: str, expected: str
) -> None:
    rig = make_rig(unhealthy_threshold=unhealthy_threshold, healthy_threshold=healthy_threshold)
    states = ""
    for probe in probes:
        rig.probe(G5, ready=probe == "+")
        states += "U" if rig.healthy()[G5] else "D"
    assert states == expected


@pytest.mark.parametrize(
    ("depths", "expected"),
    [
        pytest.param([7], 7, id="reported"),
        pytest.param([7, None], 7, id="none-keeps-last"),
        pytest.param([7, 0], 0, id="zero-is-a-report"),
    ],
)
def test_probe_reports_queue_depth(depths: list[int | None], expected: int) -> None:
    rig = make_rig()
    for depth in depths:
        rig.probe(G6, ready=True, depth=depth)
    assert rig.replica(G6).reported_queue_depth == expected


def test_replica_back_from_probes_warms_up() -> None:
    rig = make_rig(unhealthy_threshold=1, healthy_threshold=1, slow_start_s=10.0)
    rig.probe(INF2_A, ready=False)
    rig.clock.advance(60.0)
    rig.probe(INF2_A, ready=True)
    replica = rig.replica(INF2_A)
    factors = []
    for step_s in (0.0, 5.0, 5.0, 5.0):
        rig.clock.advance(step_s)
        factors.append(replica.slow_start_factor(rig.clock.now(), 10.0))
    assert factors == pytest.approx([0.1, 0.5, 1.0, 1.0])
    # The replica that never left keeps full weight.
    assert rig.replica(INF2_B).slow_start_factor(START_S, 10.0) == 1.0


def test_replica_back_from_ejection_warms_up() -> None:
    rig = make_rig(slow_start_s=10.0)
    rig.fail(G5, Failure.CONNECT)
    replica = rig.replica(G5)
    rig.clock.advance(30.0)
    assert replica.healthy(rig.clock.now())
    assert replica.slow_start_factor(rig.clock.now(), 10.0) == pytest.approx(0.1)
    rig.clock.advance(4.0)
    assert replica.slow_start_factor(rig.clock.now(), 10.0) == pytest.approx(0.4)
    rig.clock.advance(6.0)
    assert replica.slow_start_factor(rig.clock.now(), 10.0) == 1.0


def test_slow_start_zero_means_full_weight_at_once() -> None:
    rig = make_rig(slow_start_s=0.0)
    rig.fail(G5, Failure.CONNECT)
    rig.clock.advance(30.0)
    assert rig.registry.snapshot().pools[1].replicas[0].slow_start_factor == 1.0


# probe_all ---------------------------------------------------------------------


async def test_probe_all_probes_every_replica_within_the_timeout() -> None:
    rig = make_rig(unhealthy_threshold=1, probe_timeout_s=0.05)
    probed: list[str] = []

    async def probe(url: str) -> tuple[bool, int | None]:
        probed.append(url)
        if url == INF2_B:
            raise ConnectionRefusedError("refused")
        if url == G5:
            await asyncio.sleep(1.0)  # hangs past probe_timeout_s
        if url == G6:
            return False, 4
        return True, 3

    # A hung probe that were not cut off would hold the round for its full second.
    await asyncio.wait_for(rig.health.probe_all(probe), timeout=0.9)

    assert sorted(probed) == sorted(ALL_URLS)
    assert rig.healthy() == {INF2_A: True, INF2_B: False, G5: False, G6: False}
    assert rig.replica(INF2_A).reported_queue_depth == 3
    assert rig.replica(G6).reported_queue_depth == 4
    assert rig.replica(INF2_B).last_error == "probe: ConnectionRefusedError"
    assert rig.replica(G5).last_error == "probe: TimeoutError"
    assert rig.replica(G5).reported_queue_depth == 0


async def test_probe_all_needs_the_threshold_of_rounds() -> None:
    rig = make_rig(unhealthy_threshold=2, healthy_threshold=2, probe_timeout_s=0.05)
    ready = {url: url != G5 for url in ALL_URLS}

    async def probe(url: str) -> tuple[bool, int | None]:
        return ready[url], None

    await rig.health.probe_all(probe)
    assert rig.healthy()[G5]
    await rig.health.probe_all(probe)
    assert not rig.healthy()[G5]
    ready[G5] = True
    await rig.health.probe_all(probe)
    assert not rig.healthy()[G5]
    await rig.health.probe_all(probe)
    assert rig.healthy() == dict.fromkeys(ALL_URLS, True)


# Snapshot and pool state -------------------------------------------------------


def test_snapshot_reflects_live_load() -> None:
    rig = make_rig()
    rig.replica(INF2_A).in_flight = 3
    rig.replica(INF2_B).reported_queue_depth = 5
    rig.replica(G6).in_flight = 2
    rig.replica(G6).reported_queue_depth = 1
    for _ in range(20):
        rig.registry.arrivals.add(rig.clock.now())
    rig.clock.advance(4.0)

    snapshot = rig.registry.snapshot()
    inf2, g5, g6 = snapshot.pools
    assert [p.name for p in snapshot.pools] == ["inf2", "g5", "g6"]
    assert [(r.url, r.in_flight, r.reported_queue_depth) for r in inf2.replicas] == [
        (INF2_A, 3, 0),
        (INF2_B, 0, 5),
    ]
    # Outstanding counts each replica's larger figure: the gateway's own or the reported.
    assert (inf2.outstanding, g5.outstanding, g6.outstanding) == (8, 0, 2)
    # 20 arrivals 4 s ago: a young demand counter divides by at least DEMAND_MIN_SPAN_S
    assert snapshot.arrival_rate_per_s == pytest.approx(20 / max(4.0, DEMAND_MIN_SPAN_S))
    assert snapshot.target_utilization == 0.8
    assert (inf2.accelerator, inf2.price_per_hour_usd) == ("inf2.xlarge", 0.7582)
    assert (inf2.latency_s, g5.latency_s) == (0.67, 1.0)
    assert (inf2.shapes, g5.shapes) == (frozenset({"512x512"}), None)
    assert (g6.slots_per_replica, g6.replicas[0].slots) == (2, 2)
    assert all(p.capacity_state is CapacityState.AVAILABLE for p in snapshot.pools)
    assert all(p.weight is None for p in snapshot.pools)


def test_snapshot_is_frozen_at_the_time_it_was_taken() -> None:
    rig = make_rig()
    before = rig.registry.snapshot()
    rig.replica(G5).in_flight = 4
    rig.fail(G5, Failure.CONNECT)
    after = rig.registry.snapshot()
    assert (before.pools[1].outstanding, before.pools[1].replicas[0].healthy) == (0, True)
    assert (after.pools[1].outstanding, after.pools[1].replicas[0].healthy) == (4, False)


Step = tuple[Any, ...]


def apply(rig: Rig, step: Step) -> None:
    match step:
        case ("advance", seconds):
            rig.clock.advance(seconds)
        case ("fail", failure):
            rig.fail(G5, failure)
        case ("probe", ready):
            rig.probe(G5, ready=ready)
        case ("drain",):
            rig.registry.get("g5").draining = True
        case _:
            raise AssertionError(f"unknown step {step}")


BACK: list[Step] = [("fail", Failure.NOT_READY), ("probe", True), ("probe", True)]


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        pytest.param([], CapacityState.AVAILABLE, id="fresh"),
        pytest.param([("fail", Failure.CAPACITY)], CapacityState.CONSTRAINED, id="capacity-error"),
        pytest.param(
            [("fail", Failure.CAPACITY), ("advance", 4.9)],
            CapacityState.CONSTRAINED,
            id="within-hold",
        ),
        pytest.param(
            [("fail", Failure.CAPACITY), ("advance", 5.0)],
            CapacityState.AVAILABLE,
            id="after-hold",
        ),
        pytest.param([("fail", Failure.NOT_READY)], CapacityState.UNAVAILABLE, id="not-ready"),
        pytest.param([("fail", Failure.CONNECT)], CapacityState.UNAVAILABLE, id="ejected"),
        pytest.param(
            [("fail", Failure.CONNECT), ("advance", 30.0)],
            CapacityState.AVAILABLE,
            id="ejection-over",
        ),
        pytest.param([("probe", False), ("probe", False)], CapacityState.UNAVAILABLE, id="probes"),
        pytest.param(BACK, CapacityState.RECOVERING, id="probe-brings-back"),
        pytest.param([*BACK, ("advance", 9.9)], CapacityState.RECOVERING, id="still-recovering"),
        pytest.param([*BACK, ("advance", 10.0)], CapacityState.AVAILABLE, id="recovered"),
        pytest.param(
            [*BACK, ("fail", Failure.CAPACITY)],
            CapacityState.CONSTRAINED,
            id="constrained-over-recovering",
        ),
        pytest.param(
            [("fail", Failure.CAPACITY), ("fail", Failure.CONNECT)],
            CapacityState.UNAVAILABLE,
            id="unavailable-over-constrained",
        ),
        pytest.param([("drain",)], CapacityState.UNAVAILABLE, id="draining"),
    ],
)
def test_capacity_state(steps: list[Step], expected: CapacityState) -> None:
    rig = make_rig()
    for step in steps:
        apply(rig, step)
    assert rig.registry.get("g5").capacity_state(rig.clock.now()) is expected
    # Other pools stay healthy, so the snapshot is not in panic and shows the same state.
    assert rig.registry.snapshot().pools[1].capacity_state is expected


@pytest.mark.parametrize(
    ("age_s", "expected_s"),
    [
        pytest.param(0.0, 2.0, id="fresh"),
        pytest.param(LATENCY_STALE_AFTER_S, 2.0, id="just-fresh"),
        pytest.param(
            LATENCY_STALE_AFTER_S + LATENCY_RELAX_TAU_S, 1.0 + math.exp(-1.0), id="one-tau"
        ),
        pytest.param(
            LATENCY_STALE_AFTER_S + 3 * LATENCY_RELAX_TAU_S, 1.0 + math.exp(-3.0), id="three-tau"
        ),
        pytest.param(3600.0, 1.0, id="back-at-prior"),
    ],
)
def test_latency_estimate_relaxes_toward_prior_when_stale(age_s: float, expected_s: float) -> None:
    rig = make_rig()
    pool = rig.registry.get("g5")  # prior 1.0 s
    pool.latency.update(3.0)  # as the router records a completion: half way, 2.0 s
    pool.latency_updated_at = rig.clock.now()
    rig.clock.advance(age_s)
    assert pool.estimated_latency_s(rig.clock.now()) == pytest.approx(expected_s)
    assert rig.registry.snapshot().pools[1].latency_s == pytest.approx(expected_s)


@pytest.mark.parametrize("age_s", [0.0, 100.0], ids=["fresh", "stale"])
def test_latency_estimate_is_the_prior_without_samples(age_s: float) -> None:
    rig = make_rig()
    rig.clock.advance(age_s)
    assert rig.registry.get("inf2").estimated_latency_s(rig.clock.now()) == 0.67


def test_latency_estimate_is_fresh_again_after_a_new_sample() -> None:
    rig = make_rig()
    pool = rig.registry.get("g5")
    pool.latency.update(3.0)
    pool.latency_updated_at = rig.clock.now()
    rig.clock.advance(100.0)
    pool.latency.update(3.0)
    pool.latency_updated_at = rig.clock.now()
    assert pool.estimated_latency_s(rig.clock.now()) == pytest.approx(2.0 + 0.5 * 1.0)


@pytest.mark.parametrize(
    ("down", "panic"),
    [
        pytest.param(ALL_URLS, True, id="all-ejected"),
        pytest.param(ALL_URLS[:3], False, id="one-left"),
    ],
)
def test_panic_mode_when_every_replica_is_ejected(down: tuple[str, ...], panic: bool) -> None:
    rig = make_rig(outlier_max_ejected_share=1.0)
    for url in down:
        rig.fail(url, Failure.CONNECT)
    assert rig.registry.in_panic(rig.clock.now()) is panic

    snapshot = rig.registry.snapshot()
    seen = {r.url: r.healthy for p in snapshot.pools for r in p.replicas}
    if panic:
        # Everything is tried again rather than nothing; pools look constrained, not gone.
        assert seen == dict.fromkeys(ALL_URLS, True)
        assert all(p.capacity_state is CapacityState.CONSTRAINED for p in snapshot.pools)
    else:
        assert seen == {url: url not in down for url in ALL_URLS}
        assert [p.capacity_state for p in snapshot.pools] == [
            CapacityState.UNAVAILABLE,
            CapacityState.UNAVAILABLE,
            CapacityState.AVAILABLE,
        ]


def test_panic_mode_ends_with_the_ejections() -> None:
    rig = make_rig(outlier_max_ejected_share=1.0)
    for url in ALL_URLS:
        rig.fail(url, Failure.CONNECT)
    rig.clock.advance(30.0)
    assert not rig.registry.in_panic(rig.clock.now())
    assert all(p.capacity_state is CapacityState.AVAILABLE for p in rig.registry.snapshot().pools)


def test_panic_mode_when_every_replica_is_not_ready() -> None:
    rig = make_rig()
    for url in ALL_URLS:
        rig.fail(url, Failure.NOT_READY)
    snapshot = rig.registry.snapshot()
    assert rig.registry.in_panic(rig.clock.now())
    assert all(r.healthy for p in snapshot.pools for r in p.replicas)


def test_panic_mode_ignores_draining_pools() -> None:
    rig = make_rig(outlier_max_ejected_share=0.5)
    rig.registry.get("inf2").draining = True  # POST /admin/pools/inf2/drain
    rig.fail(G5, Failure.CONNECT)
    rig.fail(G6, Failure.CONNECT)  # two of four replicas: within the ejected share
    snapshot = rig.registry.snapshot()
    routable = [p for p in snapshot.pools if p.capacity_state is not CapacityState.UNAVAILABLE]
    assert [p.name for p in routable] == ["g5", "g6"]
    assert all(r.healthy for p in routable for r in p.replicas)
    assert rig.registry.in_panic(rig.clock.now())


def test_set_replicas_keeps_survivors_and_warms_up_newcomers() -> None:
    rig = make_rig(slow_start_s=10.0)
    pool = rig.registry.get("inf2")
    survivor = rig.replica(INF2_A)
    survivor.in_flight = 2
    rig.fail(INF2_A, Failure.TIMEOUT)
    rig.clock.advance(1.0)

    added = "http://127.0.0.1:9005"
    pool.set_replicas([INF2_A, added], rig.clock.now())

    assert list(pool.replicas) == [INF2_A, added]
    assert pool.replicas[INF2_A] is survivor
    assert (survivor.in_flight, survivor.consecutive_failures) == (2, 1)
    assert survivor.slow_start_factor(rig.clock.now(), 10.0) == 1.0
    newcomer = pool.replicas[added]
    assert (newcomer.pool, newcomer.slots, newcomer.in_flight) == ("inf2", 1, 0)

    factors = []
    for step_s in (0.0, 5.0, 5.0):
        rig.clock.advance(step_s)
        view = {r.url: r for r in rig.registry.snapshot().pools[0].replicas}
        factors.append(view[added].slow_start_factor)
        assert view[INF2_A].slow_start_factor == 1.0
    assert factors[0] < 1.0
    assert factors == pytest.approx([0.1, 0.5, 1.0])


def test_configured_replicas_start_at_full_weight() -> None:
    rig = make_rig(slow_start_s=10.0)
    snapshot = rig.registry.snapshot()
    assert all(r.slow_start_factor == 1.0 for p in snapshot.pools for r in p.replicas)


def test_set_replicas_forgets_removed_replicas() -> None:
    rig = make_rig()
    pool = rig.registry.get("inf2")
    rig.fail(INF2_B, Failure.CONNECT)
    pool.set_replicas([INF2_A], rig.clock.now())
    assert list(pool.replicas) == [INF2_A]
    pool.set_replicas([INF2_A, INF2_B], rig.clock.now())
    # A replica that comes back is a new one: no ejection history, and it warms up.
    assert pool.replicas[INF2_B].ejections == 0
    assert pool.replicas[INF2_B].healthy(rig.clock.now())
    assert pool.replicas[INF2_B].slow_start_factor(rig.clock.now(), 10.0) < 1.0


@pytest.mark.parametrize(
    ("requests", "failures", "expected"),
    [
        pytest.param(0, [], 0.0, id="idle"),
        pytest.param(4, [Failure.SERVER_ERROR], 0.25, id="one-in-four"),
        pytest.param(4, [Failure.TIMEOUT, Failure.CONNECT], 0.5, id="two-in-four"),
        pytest.param(4, [Failure.CAPACITY, Failure.CAPACITY], 0.0, id="capacity-not-an-error"),
        pytest.param(4, [Failure.NOT_READY], 0.25, id="not-ready-is-an-error"),
        pytest.param(1, [Failure.SERVER_ERROR] * 3, 1.0, id="capped-at-one"),
    ],
)
def test_pool_error_rate(requests: int, failures: list[Failure], expected: float) -> None:
    rig = make_rig(outlier_consecutive_failures=10)
    pool = rig.registry.get("inf2")
    for _ in range(requests):
        pool.requests.add(rig.clock.now())  # as the router counts each attempt
    for failure in failures:
        rig.fail(INF2_A, failure)
    assert pool.error_rate(rig.clock.now()) == pytest.approx(expected)
    assert rig.registry.snapshot().pools[0].error_rate == pytest.approx(expected)
    assert rig.registry.get("g5").error_rate(rig.clock.now()) == 0.0


def test_pool_error_rate_forgets_old_errors() -> None:
    rig = make_rig(rate_window_s=10.0)
    pool = rig.registry.get("inf2")
    for _ in range(4):
        pool.requests.add(rig.clock.now())
    rig.fail(INF2_A, Failure.SERVER_ERROR, times=2)
    rig.clock.advance(11.0)
    pool.requests.add(rig.clock.now())
    assert pool.error_rate(rig.clock.now()) == 0.0


@pytest.mark.parametrize("ready", [True, False], ids=["ready", "loading"])
def test_the_first_probe_decides_at_once(ready: bool) -> None:
    settings = settings_from_dict({"pools": POOLS, **BASE})
    clock = ManualClock(START_S)
    registry = PoolRegistry(settings, clock)
    health = HealthTracker(registry, settings, clock)
    replica = registry.replica("inf2", INF2_A)
    health.record_probe(replica, ready, 0)
    assert replica.healthy(clock.now()) is ready
    # from then on the thresholds apply
    health.record_probe(replica, not ready, 0)
    assert replica.healthy(clock.now()) is ready
