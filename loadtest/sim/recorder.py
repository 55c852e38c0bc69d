"""What one policy run measured: outcomes per class, latencies, cost, and time series.

Counts are per request; latency is arrival to completion (waiting, service and
any failover). A request ends exactly once: served, failed or shed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.scheduling.types import Priority

CLASSES = (Priority.INTERACTIVE, Priority.BATCH)
LEAVE_WINDOW_S = 5  # traffic has left once a window this long stays under the threshold
LEAVE_PRE_FAULT_S = 60  # the pre-fault rate is the mean over this long before the fault
LEAVE_RESIDUAL_SHARE = 0.05  # probes: up to this share of the pre-fault rate may stay
UNSERVED_LOG_MAX = 200  # failed, and shed, requests kept with their reasons (each)


@dataclass
class FaultRecord:
    at_s: float
    pool: str
    kind: str
    capacity_after_per_s: float  # what the pool can complete right after the fault
    leave_s: float | None = None  # None: traffic never left within the run
    needed: bool = True  # False: the pool's traffic was already within what it could carry


@dataclass
class ClassCounts:
    arrivals: int = 0
    served: int = 0
    images_served: int = 0
    failed: int = 0
    shed: int = 0
    slo_met: int = 0
    failed_capacity_sufficed: int = 0  # failures while ready capacity exceeded demand
    latencies_s: list[float] = field(default_factory=list)


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class Recorder:
    """Accumulates one run; `summary()` and `series()` give the results."""

    def __init__(self, pools: Sequence[str], duration_s: float, bucket_s: float) -> None:
        self.pools = list(pools)
        self.duration_s = duration_s
        self.bucket_s = bucket_s
        seconds = math.ceil(duration_s) + 1
        buckets = max(1, math.ceil(duration_s / bucket_s))  # work draining after the end: last
        self.n_buckets = buckets
        self.classes = {c: ClassCounts() for c in CLASSES}
        self.attempts_per_s = {p: [0] * seconds for p in pools}
        self.served_per_bucket = {p: [0] * buckets for p in pools}
        self.billed_per_bucket = {p: [0.0] * buckets for p in pools}  # replica-seconds
        self.ready_per_bucket = {p: [0.0] * buckets for p in pools}
        self.latency_per_bucket: list[list[float]] = [[] for _ in range(buckets)]
        self.cost_per_bucket = [0.0] * buckets  # cumulative at the bucket's end
        self.mode_per_bucket: list[str] = [""] * buckets
        self.cost_usd = 0.0
        self.replica_seconds = dict.fromkeys(pools, 0.0)
        self.retried = 0  # requests that needed more than one attempt
        self.faults: list[FaultRecord] = []
        self.unserved_log: list[dict[str, Any]] = []
        self._logged_failed = 0
        self._logged_shed = 0

    def _bucket(self, t_s: float) -> int:
        return min(int(t_s / self.bucket_s), self.n_buckets - 1)

    # events ---------------------------------------------------------------------------------

    def attempt(self, pool: str, now: float) -> None:
        second = int(now)
        if second < len(self.attempts_per_s[pool]):
            self.attempts_per_s[pool][second] += 1

    def served(
        self, priority: Priority, pool: str, images: int, latency_s: float, slo_s: float, now: float
    ) -> None:
        counts = self.classes[priority]
        counts.served += 1
        counts.images_served += images
        counts.latencies_s.append(latency_s)
        if latency_s <= slo_s:
            counts.slo_met += 1
        bucket = self._bucket(now)
        self.served_per_bucket[pool][bucket] += images
        if priority is Priority.INTERACTIVE:
            self.latency_per_bucket[bucket].append(latency_s)

    def unserved(
        self,
        priority: Priority,
        now: float,
        *,
        shed: bool,
        capacity_sufficed: bool,
        why: Sequence[str] = (),
    ) -> None:
        counts = self.classes[priority]
        if shed:
            counts.shed += 1
        else:
            counts.failed += 1
            counts.failed_capacity_sufficed += capacity_sufficed
        logged = self._logged_shed if shed else self._logged_failed
        if logged < UNSERVED_LOG_MAX:
            if shed:
                self._logged_shed += 1
            else:
                self._logged_failed += 1
            self.unserved_log.append(
                {
                    "at_s": round(now, 3),
                    "class": priority.value,
                    "shed": shed,
                    "capacity_sufficed": capacity_sufficed,
                    "attempts": list(why),
                }
            )

    def second(self, now: float, pool: str, billed: int, ready: int, price_per_hour: float) -> None:
        """One second of a pool's replicas: billing and the replica series."""
        cost = billed * price_per_hour / 3600.0
        self.cost_usd += cost
        self.replica_seconds[pool] += billed
        bucket = self._bucket(now)
        self.billed_per_bucket[pool][bucket] += billed
        self.ready_per_bucket[pool][bucket] += ready
        self.cost_per_bucket[bucket] = self.cost_usd

    def mode(self, now: float, mode: str) -> None:
        self.mode_per_bucket[self._bucket(now)] = mode

    # results --------------------------------------------------------------------------------

    def settle_faults(self) -> None:
        """Fill each fault's `leave_s` from the per-second attempts at its pool."""
        for fault in self.faults:
            series = self.attempts_per_s[fault.pool]
            start = int(fault.at_s)
            before = series[max(0, start - LEAVE_PRE_FAULT_S) : start]
            pre_rate = sum(before) / max(1, len(before))
            threshold = max(fault.capacity_after_per_s, LEAVE_RESIDUAL_SHARE * pre_rate)
            if pre_rate <= threshold:
                fault.leave_s = 0.0
                fault.needed = False
                continue
            end = min(len(series), math.ceil(self.duration_s))
            fault.leave_s = None
            for t in range(start, end - LEAVE_WINDOW_S + 1):
                window = series[t : t + LEAVE_WINDOW_S]
                if sum(window) / LEAVE_WINDOW_S <= threshold:
                    fault.leave_s = float(t - start)
                    break

    def summary(self) -> dict[str, Any]:
        self.settle_faults()
        out: dict[str, Any] = {}
        images = sum(c.images_served for c in self.classes.values())
        for cls, counts in self.classes.items():
            ordered = sorted(counts.latencies_s)
            out[cls.value] = {
                "arrivals": counts.arrivals,
                "served": counts.served,
                "failed": counts.failed,
                "shed": counts.shed,
                "failed_while_capacity_sufficed": counts.failed_capacity_sufficed,
                "slo_attainment": counts.slo_met / counts.arrivals if counts.arrivals else None,
                "slo_attainment_of_served": counts.slo_met / counts.served
                if counts.served
                else None,
                "p50_s": percentile(ordered, 50),
                "p95_s": percentile(ordered, 95),
                "p99_s": percentile(ordered, 99),
            }
        leaves = [f.leave_s for f in self.faults if f.needed]
        out |= {
            "images_served": images,
            "requests_retried": self.retried,
            "cost_usd": self.cost_usd,
            "usd_per_1k_images": 1000.0 * self.cost_usd / images if images else None,
            "replica_hours": {p: s / 3600.0 for p, s in self.replica_seconds.items()},
            "faults": [
                {
                    "at_s": f.at_s,
                    "pool": f.pool,
                    "kind": f.kind,
                    "capacity_after_per_s": f.capacity_after_per_s,
                    "traffic_left_after_s": f.leave_s,
                    "traffic_had_to_leave": f.needed,
                }
                for f in self.faults
            ],
            "traffic_left_after_s_max": (
                None if not leaves else (None if None in leaves else max(x or 0.0 for x in leaves))
            ),
            "traffic_never_left": sum(1 for x in leaves if x is None),
        }
        return out

    def series(self) -> dict[str, Any]:
        """Per-bucket time series for the plots (rounded to keep results.json small)."""
        p95 = []
        for values in self.latency_per_bucket:
            values.sort()
            top = percentile(values, 95)
            p95.append(round(top, 3) if top is not None else None)
        return {
            "bucket_s": self.bucket_s,
            "served": {p: v for p, v in self.served_per_bucket.items()},
            "replicas": {
                p: [round(x / self.bucket_s, 2) for x in v]
                for p, v in self.billed_per_bucket.items()
            },
            "ready": {
                p: [round(x / self.bucket_s, 2) for x in v]
                for p, v in self.ready_per_bucket.items()
            },
            "interactive_p95_s": p95,
            "cost_usd": [round(x, 4) for x in self.cost_per_bucket],
            "mode": self.mode_per_bucket,
        }
