"""The simulated backends: pools of model-server replicas with slots and a waiting room.

A replica behaves as `backends/queue.py` does: `slots` requests in service,
at most `max_queue` more waiting in FIFO order with batch work behind all
interactive work (every client says which in `X-Priority`, and every
policy's proxy passes it on), and a 429 with a Retry-After (the backlog in
seconds) beyond that. Service times come from
`backends.engines.simulated.sample_service_time_s` on the pool's profile.
Replicas live through PROVISIONING -> READY -> DRAINING -> GONE; a lost
replica goes straight to GONE and its work fails as a dropped connection.
A replica being scaled down keeps serving until the gateway's discovery has
dropped it (a preStop sleep), then finishes what it holds and goes.
"""

from __future__ import annotations

import collections
import enum
import math
import random

from backends.engines.base import GenerationRequest
from backends.engines.simulated import mean_service_time_s, sample_service_time_s
from gateway.pools import ReplicaState
from gateway.scheduling.types import Priority, RequestProfile
from loadtest.sim.scenario import PoolSpec, replica_url


class ReplicaPhase(enum.IntEnum):
    PROVISIONING = 0  # node launching and model loading: billed, not serving
    READY = 1
    DRAINING = 2  # scaled down: serves until discovery drops it (preStop), then finishes
    GONE = 3


class Request:
    """One client request and the state of its attempts."""

    __slots__ = (
        "area",
        "arrived_s",
        "counted",
        "excluded",
        "failures",
        "gen",
        "id",
        "profile",
        "tries",
    )

    def __init__(
        self, rid: int, arrived_s: float, profile: RequestProfile, gen: GenerationRequest
    ) -> None:
        self.id = rid
        self.arrived_s = arrived_s
        self.profile = profile
        self.gen = gen
        self.area = profile.width * profile.height / 512**2  # in 512x512 images
        self.counted = 0  # attempts that count against max_attempts
        self.tries = 0
        self.excluded: list[str] = []
        self.failures: list[str] = []


class Job:
    """One accepted attempt: a request at a replica, waiting or in service."""

    __slots__ = ("cancelled", "dispatched_s", "replica", "request", "service_s", "state")

    def __init__(
        self, request: Request, replica: SimReplica, state: ReplicaState, now: float
    ) -> None:
        self.request = request
        self.replica = replica
        self.state = state  # the gateway's view of the replica, for its in-flight count
        self.dispatched_s = now
        self.service_s = 0.0
        self.cancelled = False


class SimReplica:
    __slots__ = ("busy", "created_s", "index", "phase", "pool", "queue", "running", "url")

    def __init__(self, pool: SimPool, index: int, phase: ReplicaPhase, now: float) -> None:
        self.pool = pool
        self.index = index
        self.url = replica_url(pool.name, index)
        self.phase = phase
        self.created_s = now
        self.busy = 0
        self.queue: collections.deque[Job] = collections.deque()
        self.running: list[Job] = []

    @property
    def depth(self) -> int:
        return self.busy + len(self.queue)

    def next_job(self) -> Job:
        """The next waiting job: the oldest interactive one, else the oldest batch one."""
        for i, job in enumerate(self.queue):
            if job.request.profile.priority is Priority.INTERACTIVE:
                del self.queue[i]
                return job
        return self.queue.popleft()

    def retry_after_s(self) -> int:
        """What the model server's queue would say: the backlog in whole seconds (>= 1)."""
        backlog = self.depth * self.pool.spec.latency_s * self.pool.slowdown / self.pool.spec.slots
        return max(1, math.ceil(backlog))


class SimPool:
    """One pool's replicas and faults, as the cluster has them (not as the gateway sees them)."""

    def __init__(self, spec: PoolSpec, rng: random.Random) -> None:
        self.spec = spec
        self.name = spec.name
        self.profile = spec.accelerator_profile()
        self.rng = rng
        self.replicas: dict[str, SimReplica] = {}  # every replica not GONE, oldest first
        self.next_index = 0
        self.max_now = spec.replicas.max
        self.capacity_errors = False
        self.slowdown = 1.0
        self.price_per_hour_usd = spec.price_per_hour

    def add(self, phase: ReplicaPhase, now: float) -> SimReplica:
        replica = SimReplica(self, self.next_index, phase, now)
        self.next_index += 1
        self.replicas[replica.url] = replica
        return replica

    def remove(self, replica: SimReplica) -> None:
        replica.phase = ReplicaPhase.GONE
        self.replicas.pop(replica.url, None)

    def in_phase(self, phase: ReplicaPhase) -> list[SimReplica]:
        return [r for r in self.replicas.values() if r.phase is phase]

    def count(self, *phases: ReplicaPhase) -> int:
        return sum(1 for r in self.replicas.values() if r.phase in phases)

    def ready_urls(self) -> list[str]:
        return [r.url for r in self.replicas.values() if r.phase is ReplicaPhase.READY]

    def outstanding(self) -> int:
        return sum(r.busy + len(r.queue) for r in self.replicas.values())

    def ready_capacity_per_s(self) -> float:
        """512x512 images per second the READY replicas complete at full load."""
        ready = self.count(ReplicaPhase.READY)
        return ready * self.spec.slots / (self.spec.latency_s * self.slowdown)

    def service_time_s(self, gen: GenerationRequest) -> float:
        spec = self.spec
        if spec.service == "lognormal":
            return sample_service_time_s(self.profile, gen, self.rng) * self.slowdown
        mean = mean_service_time_s(self.profile, gen) * self.slowdown
        if spec.service == "exponential":
            return self.rng.expovariate(1.0 / mean)
        return mean
