"""Replica health: active readiness probes, passive outlier ejection, slow start.

Rules, each a setting:
- Active: a replica turns unhealthy after `unhealthy_threshold` failed probes
  in a row and healthy again after `healthy_threshold` good ones; it then
  re-joins under slow start.
- Passive: a replica is ejected after `outlier_consecutive_failures` failures
  in a row (5xx, timeouts), or when at least half its recent outcomes failed
  (`outlier_failure_share`), or at once on a refused connection. Ejection lasts
  `outlier_base_ejection_s` times the number of ejections so far, capped at
  `outlier_max_ejection_s`; at most `outlier_max_ejected_share` of all replicas
  are ejected at once (one is always allowed).
- Capacity errors (429, 503 with Retry-After) do not count as failures: they
  mark the pool constrained for `capacity_hold_s` (or the Retry-After, if
  longer, capped at 30 s). A 503 "not ready" takes the replica out until
  probes bring it back.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable

from backends.clock import Clock
from gateway.pools import PoolRegistry, ReplicaState
from gateway.settings import GatewaySettings

log = logging.getLogger("gateway.health")

# Enough recent outcomes before the failure share is trusted.
MIN_OUTCOMES_FOR_SHARE = 6
OUTLIER_FAILURE_SHARE = 0.5
MAX_CAPACITY_HOLD_S = 30.0


class Failure(enum.StrEnum):
    CONNECT = "connect"  # refused / unreachable: the process is gone
    TIMEOUT = "timeout"
    SERVER_ERROR = "server_error"  # 5xx other than a capacity 503
    NOT_READY = "not_ready"  # 503 from a replica that is loading or draining
    CAPACITY = "capacity"  # 429, or 503 with Retry-After: a shortfall, not a fault
    UNSUPPORTED = "unsupported"  # 422 unsupported_request: this pool cannot run it; try another


EjectionListener = Callable[[ReplicaState, str], None]
# Probe one replica: returns (ready, reported queue depth or None); raises on transport errors.
ProbeFn = Callable[[str], Awaitable[tuple[bool, int | None]]]


class HealthTracker:
    """Applies outcome and probe rules to the registry's replicas."""

    def __init__(
        self,
        registry: PoolRegistry,
        settings: GatewaySettings,
        clock: Clock,
        on_eject: EjectionListener | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.clock = clock
        self.on_eject = on_eject

    # passive -----------------------------------------------------------------

    def record_success(self, replica: ReplicaState) -> None:
        replica.consecutive_failures = 0
        replica.outcomes.append(True)

    def record_failure(self, replica: ReplicaState, failure: Failure, detail: str = "") -> None:
        now = self.clock.now()
        pool = self.registry.get(replica.pool)
        replica.last_error = f"{failure.value}: {detail}" if detail else failure.value
        if failure is Failure.UNSUPPORTED:
            return
        if failure is Failure.CAPACITY:
            hold = max(self.settings.capacity_hold_s, 0.0)
            pool.constrained_until = max(pool.constrained_until, now + hold)
            pool.capacity_errors.add(now)
            return
        pool.errors.add(now)
        if failure is Failure.NOT_READY:
            self._mark_probe_down(replica)
            return
        replica.consecutive_failures += 1
        replica.outcomes.append(False)
        if failure is Failure.CONNECT:
            self._eject(replica, now, "connection failed")
        elif replica.consecutive_failures >= self.settings.outlier_consecutive_failures:
            self._eject(replica, now, f"{replica.consecutive_failures} consecutive failures")
        elif len(replica.outcomes) >= MIN_OUTCOMES_FOR_SHARE:
            failed = replica.outcomes.count(False) / len(replica.outcomes)
            if failed >= OUTLIER_FAILURE_SHARE:
                self._eject(replica, now, f"{failed:.0%} of recent requests failed")

    def note_retry_after(self, replica: ReplicaState, retry_after_s: float) -> None:
        """A capacity answer's Retry-After extends the pool's constrained period."""
        pool = self.registry.get(replica.pool)
        hold = min(max(retry_after_s, self.settings.capacity_hold_s), MAX_CAPACITY_HOLD_S)
        pool.constrained_until = max(pool.constrained_until, self.clock.now() + hold)

    def _eject(self, replica: ReplicaState, now: float, reason: str) -> None:
        if replica.ejected(now):
            return
        replicas = list(self.registry.replicas())
        ejected = sum(1 for r in replicas if r.ejected(now))
        if ejected and (ejected + 1) > self.settings.outlier_max_ejected_share * len(replicas):
            return
        replica.ejections += 1
        duration = min(
            self.settings.outlier_base_ejection_s * replica.ejections,
            self.settings.outlier_max_ejection_s,
        )
        replica.ejected_until = now + duration
        replica.joined_at = replica.ejected_until  # slow start once it is back
        replica.consecutive_failures = 0
        replica.outcomes.clear()
        log.warning("ejected %s for %.0f s: %s", replica.url, duration, reason)
        if self.on_eject is not None:
            self.on_eject(replica, reason)

    # active ------------------------------------------------------------------

    def record_probe(self, replica: ReplicaState, ready: bool, queue_depth: int | None) -> None:
        if queue_depth is not None:
            replica.reported_queue_depth = queue_depth
        if not replica.probed:
            replica.probed = True
            replica.probe_ok = ready
            replica.probe_successes = int(ready)
            replica.probe_failures = int(not ready)
            return
        if ready:
            replica.probe_failures = 0
            replica.probe_successes += 1
            if not replica.probe_ok and replica.probe_successes >= self.settings.healthy_threshold:
                replica.probe_ok = True
                replica.joined_at = self.clock.now()
                pool = self.registry.get(replica.pool)
                pool.recovering_until = replica.joined_at + self.settings.slow_start_s
                log.info("%s is healthy again", replica.url)
        else:
            replica.probe_successes = 0
            replica.probe_failures += 1
            if replica.probe_ok and replica.probe_failures >= self.settings.unhealthy_threshold:
                self._mark_probe_down(replica)

    def _mark_probe_down(self, replica: ReplicaState) -> None:
        if replica.probe_ok:
            log.warning("%s is not ready: %s", replica.url, replica.last_error or "probe failed")
        replica.probe_ok = False
        replica.probe_successes = 0

    async def probe_all(self, probe: ProbeFn) -> None:
        """Probe every replica once, concurrently, each within `probe_timeout_s`."""

        async def one(replica: ReplicaState) -> None:
            try:
                async with asyncio.timeout(self.settings.probe_timeout_s):
                    ready, depth = await probe(replica.url)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                replica.last_error = f"probe: {type(exc).__name__}"
                ready, depth = False, None
            self.record_probe(replica, ready, depth)

        await asyncio.gather(*(one(r) for r in list(self.registry.replicas())))

    async def run(self, probe: ProbeFn) -> None:
        """Probe every `probe_interval_s` until cancelled."""
        while True:
            try:
                await self.probe_all(probe)
            except Exception:
                log.exception("probe round failed")
            await self.clock.sleep(self.settings.probe_interval_s)
