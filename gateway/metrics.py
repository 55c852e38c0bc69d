"""Prometheus collectors of one gateway worker, in a registry of its own.

Counters and histograms are fed by the router as events happen; per-pool
gauges are read from a fresh snapshot at scrape time, so they are never stale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.scheduling.types import Snapshot

LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0)
OVERHEAD_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


class _PoolCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot], mode: Callable[[], str]) -> None:
        self._snapshot = snapshot
        self._mode = mode

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self._snapshot()
        families = {
            "weight": GaugeMetricFamily(
                "sd_gateway_pool_weight", "Routing weight of the pool.", labels=["pool"]
            ),
            "healthy": GaugeMetricFamily(
                "sd_gateway_pool_healthy_replicas", "Replicas taking traffic.", labels=["pool"]
            ),
            "latency": GaugeMetricFamily(
                "sd_gateway_pool_latency_seconds",
                "EWMA service time per image.",
                labels=["pool"],
            ),
            "queue": GaugeMetricFamily(
                "sd_gateway_pool_queue_seconds",
                "Predicted wait before service, in seconds of work.",
                labels=["pool"],
            ),
            "cost": GaugeMetricFamily(
                "sd_gateway_pool_cost_per_image_usd", "Price per image.", labels=["pool"]
            ),
            "outstanding": GaugeMetricFamily(
                "sd_gateway_pool_outstanding", "Images in flight or queued.", labels=["pool"]
            ),
        }
        state = GaugeMetricFamily(
            "sd_gateway_pool_state", "1 for the pool's capacity state.", labels=["pool", "state"]
        )
        for p in snap.pools:
            families["weight"].add_metric([p.name], p.weight if p.weight is not None else -1.0)
            families["healthy"].add_metric([p.name], len(p.healthy_replicas))
            families["latency"].add_metric([p.name], p.latency_s)
            families["queue"].add_metric([p.name], min(p.wait_s, 1e9))
            families["cost"].add_metric([p.name], p.cost_per_image_usd)
            families["outstanding"].add_metric([p.name], p.outstanding)
            state.add_metric([p.name, p.capacity_state.value], 1)
        yield from families.values()
        yield state
        mode = GaugeMetricFamily("sd_gateway_mode", "1 for the current mode.", labels=["mode"])
        mode.add_metric([self._mode()], 1)
        yield mode
        rate = GaugeMetricFamily("sd_gateway_arrival_rate", "Images requested per second.")
        rate.add_metric([], snap.arrival_rate_per_s)
        yield rate


class GatewayMetrics:
    """Every collector of the gateway."""

    def __init__(self, snapshot: Callable[[], Snapshot], mode: Callable[[], str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "sd_gateway_requests_total",
            "Client requests by final pool, status and priority class.",
            ["pool", "status", "priority"],
            registry=r,
        )
        self.duration = Histogram(
            "sd_gateway_request_duration_seconds",
            "End-to-end time to the response headers.",
            ["pool", "priority"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.overhead = Histogram(
            "sd_gateway_overhead_seconds",
            "Gateway time per request, excluding time waiting on backends.",
            buckets=OVERHEAD_BUCKETS_S,
            registry=r,
        )
        self.attempts = Counter(
            "sd_gateway_attempts_total",
            "Upstream attempts by pool and outcome.",
            ["pool", "outcome"],
            registry=r,
        )
        self.failovers = Counter(
            "sd_gateway_failovers_total",
            "Requests moved to another pool, by the pool left and why.",
            ["pool", "reason"],
            registry=r,
        )
        self.ejections = Counter(
            "sd_gateway_ejections_total", "Replicas ejected as outliers.", ["pool"], registry=r
        )
        self.retry_budget_exhausted = Counter(
            "sd_gateway_retry_budget_exhausted_total",
            "Failovers refused by the retry budget.",
            registry=r,
        )
        self.transitions = Counter(
            "sd_gateway_transitions_total",
            "Capacity state machine transitions: of the mode, or of a pool's state.",
            ["kind", "subject", "to"],
            registry=r,
        )
        self.desired_replicas = Gauge(
            "sd_gateway_pool_desired_replicas",
            "Replicas the pool should run to carry its allocation at target utilization.",
            ["pool"],
            registry=r,
        )
        self.shed = Counter(
            "sd_gateway_shed_total",
            "Requests refused to protect interactive work or the spend limit.",
            ["priority", "reason"],
            registry=r,
        )
        r.register(_PoolCollector(snapshot, mode))
        # Bound children, per label values: `labels()` validates and locks on every call.
        self._requests_by: dict[tuple[str, int, str], Counter] = {}
        self._duration_by: dict[tuple[str, str], Histogram] = {}
        self._attempts_by: dict[tuple[str, str], Counter] = {}

    def request_done(
        self, pool: str, status: int, priority: str, duration_s: float | None = None
    ) -> None:
        """Count a client request by final pool, status and class; observe its duration if given."""
        key = (pool, status, priority)
        counter = self._requests_by.get(key)
        if counter is None:
            counter = self._requests_by[key] = self.requests.labels(pool, str(status), priority)
        counter.inc()
        if duration_s is not None:
            histogram = self._duration_by.get((pool, priority))
            if histogram is None:
                histogram = self._duration_by[(pool, priority)] = self.duration.labels(
                    pool, priority
                )
            histogram.observe(duration_s)

    def attempt(self, pool: str, outcome: str) -> None:
        """Count an upstream attempt by pool and outcome."""
        counter = self._attempts_by.get((pool, outcome))
        if counter is None:
            counter = self._attempts_by[(pool, outcome)] = self.attempts.labels(pool, outcome)
        counter.inc()
