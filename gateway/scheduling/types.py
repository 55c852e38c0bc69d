"""Shared data types of the scheduling pipeline.

All views are frozen: the runner builds a `Snapshot` from live state, hands it
to a policy, and acts on the returned `Decision`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum


class Priority(StrEnum):
    INTERACTIVE = "interactive"
    BATCH = "batch"


class CapacityState(StrEnum):
    """How much a pool can take right now, as seen by the gateway."""

    AVAILABLE = "available"
    CONSTRAINED = "constrained"  # capacity errors (429/503 insufficient capacity) seen recently
    UNAVAILABLE = "unavailable"  # no healthy replica
    RECOVERING = "recovering"  # came back, not yet trusted at full weight


@dataclass(frozen=True, slots=True)
class RequestProfile:
    """What the scheduler needs to know about one request."""

    width: int = 512
    height: int = 512
    n: int = 1
    steps: int | None = None
    priority: Priority = Priority.INTERACTIVE
    slo_s: float = 2.0  # completion objective of the request's class, seconds
    _shape: str = field(default="", init=False, repr=False, compare=False)

    @property
    def size(self) -> float:
        """Pixels per image relative to 512x512: how much longer than one it takes."""
        return self.width * self.height / (512 * 512)

    @property
    def shape(self) -> str:
        """`WIDTHxHEIGHT`, formatted once."""
        shape = self._shape
        if not shape:
            shape = f"{self.width}x{self.height}"
            object.__setattr__(self, "_shape", shape)
        return shape


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """One model server as the gateway sees it."""

    url: str
    pool: str
    healthy: bool = True  # passes active probes and is not ejected
    in_flight: int = 0  # requests the gateway has outstanding at this replica
    reported_queue_depth: int = 0  # last X-Queue-Depth the replica reported
    slots: int = 1
    slow_start_factor: float = 1.0  # in (0, 1]; below 1 while a (re)joined replica warms up

    @property
    def load(self) -> float:
        """Outstanding work per slot, discounted by slow start (lower is better)."""
        outstanding = max(self.in_flight, self.reported_queue_depth)
        return (outstanding + 1) / (self.slots * max(self.slow_start_factor, 1e-3))


@dataclass(frozen=True, slots=True)
class PoolView:
    """One pool of replicas with the live signals the scheduler scores.

    `latency_s` is the EWMA service time per image (the configured prior until
    measured, never zero). `outstanding` is the work waiting at the pool in
    images (Q_p). `weight` is the control loop's weight, or None when no loop
    has published one yet (policies then derive static weights).
    """

    name: str
    accelerator: str
    price_per_hour_usd: float
    slots_per_replica: int
    latency_s: float
    replicas: tuple[ReplicaView, ...]
    shapes: frozenset[str] | None = None  # None = any shape
    outstanding: int = 0
    capacity_state: CapacityState = CapacityState.AVAILABLE
    weight: float | None = None
    error_rate: float = 0.0  # share of recent requests that failed, in [0, 1]
    max_batch: int | None = None  # largest n its replicas run in one call; None: unknown
    unit_latency_s: float | None = None  # EWMA per 512x512-equivalent image; None: latency_s
    # Derived from `replicas` on first use and kept: a decision reads them many times.
    _healthy: tuple[ReplicaView, ...] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _healthy_slots: int = field(default=-1, init=False, repr=False, compare=False)

    @property
    def healthy_replicas(self) -> tuple[ReplicaView, ...]:
        healthy = self._healthy
        if healthy is None:
            healthy = tuple(r for r in self.replicas if r.healthy)
            object.__setattr__(self, "_healthy", healthy)
        return healthy

    @property
    def healthy_slots(self) -> int:
        slots = self._healthy_slots
        if slots < 0:
            slots = sum(r.slots for r in self.healthy_replicas)
            object.__setattr__(self, "_healthy_slots", slots)
        return slots

    @property
    def capacity_images_per_s(self) -> float:
        """T_p = R_p s_p / L_p."""
        slots = self.healthy_slots
        return slots / self.latency_s if slots else 0.0

    @property
    def wait_s(self) -> float:
        """W_p = Q_p L_p / (R_p s_p); infinite with no healthy slot."""
        slots = self.healthy_slots
        return self.outstanding * self.latency_s / slots if slots else math.inf

    @property
    def predicted_completion_s(self) -> float:
        """E_p = W_p + L_p."""
        return self.wait_s + self.latency_s

    def service_s(self, request: RequestProfile) -> float:
        """Expected service time per image of the request's size."""
        if self.unit_latency_s is None:
            return self.latency_s
        return self.unit_latency_s * request.size

    def completion_s(self, request: RequestProfile) -> float:
        """E_p for this request: the queue W_p, then its own service time."""
        return self.wait_s + self.service_s(request)

    def replica_completion_s(self, replica: ReplicaView, request: RequestProfile) -> float:
        """When the request would finish on one replica: what waits there, then its service.

        Images beyond the replica's slots wait; the first of them for half a
        service time on average (the running ones are part done), each further
        one for a service time per slot.
        """
        waiting = max(replica.in_flight, replica.reported_queue_depth) - replica.slots
        wait_s = (waiting + 0.5) * self.latency_s / replica.slots if waiting >= 0 else 0.0
        return wait_s + self.service_s(request)

    @property
    def cost_per_image_usd(self) -> float:
        """c_p = price_p L_p / (3600 s_p)."""
        return self.price_per_hour_usd * self.latency_s / (3600.0 * self.slots_per_replica)

    @property
    def utilization(self) -> float:
        """Outstanding images per healthy slot (1.0 = every slot busy, none waiting)."""
        slots = self.healthy_slots
        return self.outstanding / slots if slots else math.inf

    def supports(self, shape: str, n: int = 1) -> bool:
        shape_ok = self.shapes is None or shape in self.shapes
        return shape_ok and (self.max_batch is None or n <= self.max_batch)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a policy may look at for one decision."""

    pools: tuple[PoolView, ...]
    arrival_rate_per_s: float = 0.0  # measured images/s arriving at the gateway
    target_utilization: float = 0.8

    def pool(self, name: str) -> PoolView:
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class Decision:
    """Where one request goes, and why."""

    pool: str
    replica: str
    predicted_completion_s: float  # E_p of the chosen pool for this request
    cost_per_image_usd: float
    # When this request would finish on the chosen replica (`PoolView.replica_completion_s`):
    # what the overload refusal and its Retry-After go by.
    replica_completion_s: float
    meets_slo: bool = True
    scores: dict[str, float] = field(default_factory=dict)
