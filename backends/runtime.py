"""The model server's state: engine lifecycle, admission, faults and draining.

HTTP-free: `server.py` maps the exceptions raised here to status codes.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from dataclasses import dataclass

from backends.clock import Clock, MonotonicClock
from backends.engines.base import Engine, EngineError, GenerationRequest, GenerationResult
from backends.faults import Faults
from backends.metrics import BackendMetrics
from backends.queue import AdmissionQueue
from backends.settings import ServerSettings

log = logging.getLogger("backends.runtime")


class Phase(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"


class NotReadyError(Exception):
    """The server does not take work now (loading, failed, draining, or made unavailable)."""

    def __init__(self, reason: str, retry_after_s: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class InsufficientCapacityError(Exception):
    """An injected capacity shortfall: the server answers 429 'insufficient capacity'."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("insufficient capacity")
        self.retry_after_s = retry_after_s


class InjectedFailureError(EngineError):
    """An injected random failure (maps to 500)."""


@dataclass(frozen=True, slots=True)
class Served:
    """A finished generation, with the wait and service time the client is told about."""

    result: GenerationResult
    queue_wait_s: float
    inference_seconds: float


class BackendRuntime:
    """One engine behind an admission queue, with a lifecycle and injectable faults."""

    def __init__(
        self,
        engine: Engine,
        settings: ServerSettings,
        *,
        slots: int,
        prior_service_s: float,
        clock: Clock | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.clock = clock or MonotonicClock()
        caps = engine.capabilities()
        self.capabilities = caps
        self.metrics = BackendMetrics(caps.accelerator, engine.name)
        self.queue = AdmissionQueue(
            slots, settings.max_queue, prior_service_s=prior_service_s, clock=self.clock
        )
        self.metrics.slots.labels(caps.accelerator).set(slots)
        self.faults = Faults()
        self.phase = Phase.LOADING
        self.failure: str | None = None
        self._rng = random.Random(settings.seed)

    # lifecycle ---------------------------------------------------------------

    async def load(self) -> None:
        """Load the engine; on failure the server stays up, not ready, with the reason."""
        try:
            await self.engine.load()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
            self.phase = Phase.FAILED
            log.error("engine %s failed to load: %s", self.engine.name, self.failure)
            return
        if self.phase is Phase.LOADING:
            self.phase = Phase.READY
            self._set_ready_gauge()
            log.info("engine %s ready (%s)", self.engine.name, self.capabilities.accelerator)

    def begin_drain(self) -> None:
        """Stop taking new work; accepted work still finishes."""
        if self.phase is not Phase.DRAINING:
            log.info("draining: %d requests in the server", self.queue.depth)
        self.phase = Phase.DRAINING
        self._set_ready_gauge()

    async def drain(self) -> None:
        """Flip to draining, then return once accepted work is done or the timeout passed."""
        self.begin_drain()
        try:
            await asyncio.wait_for(self.queue.wait_idle(), self.settings.drain_timeout_s)
        except TimeoutError:
            log.warning("drain timeout: %d requests still in the server", self.queue.depth)
        await self.clock.sleep(self.settings.drain_delay_s)

    def readiness(self) -> tuple[bool, str]:
        if self.faults.unavailable:
            return False, "unavailable (injected fault)"
        if self.phase is Phase.FAILED:
            return False, f"failed to load: {self.failure}"
        if self.phase is not Phase.READY:
            return False, self.phase.value
        return True, "ready"

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults
        self._set_ready_gauge()

    # the work ----------------------------------------------------------------

    async def generate(self, request: GenerationRequest, *, batch: bool = False) -> Served:
        """Admit, generate and account one request (`batch` work waits behind interactive).

        Raises NotReadyError (503), InsufficientCapacityError (429),
        QueueFullError (429), UnsupportedRequestError (422) or EngineError (500).
        """
        ready, reason = self.readiness()
        if not ready:
            self._reject("not_ready")
            raise NotReadyError(reason)
        if self.faults.capacity_error:
            self._reject("capacity_error")
            raise InsufficientCapacityError(self.queue.retry_after_s())
        self.capabilities.check(request)
        acc = self.capabilities.accelerator
        try:
            wait_s = await self.queue.acquire(batch=batch)
        except Exception:
            self._reject("queue_full")
            raise
        finally:
            self.metrics.queue_depth.labels(acc).set(self.queue.depth)
        service_s: float | None = None
        try:
            self.metrics.queue_wait.labels(acc).observe(wait_s)
            started = self.clock.now()
            result = await self.engine.generate(request)
            multiplier = self.faults.latency_multiplier
            if multiplier > 1.0:
                await self.clock.sleep((multiplier - 1.0) * result.inference_seconds)
            service_s = self.clock.now() - started
            inference_s = result.inference_seconds * multiplier
            if self.faults.error_rate and self._rng.random() < self.faults.error_rate:
                raise InjectedFailureError("injected failure")
        finally:
            self.queue.release(service_s)
            self.metrics.queue_depth.labels(acc).set(self.queue.depth)
        self.metrics.inference.labels(acc).observe(inference_s)
        self.metrics.images.labels(acc).inc(len(result.images_png))
        return Served(result=result, queue_wait_s=wait_s, inference_seconds=inference_s)

    def _reject(self, reason: str) -> None:
        self.metrics.rejected.labels(self.capabilities.accelerator, reason).inc()

    def _set_ready_gauge(self) -> None:
        self.metrics.ready.labels(self.capabilities.accelerator).set(
            1 if self.readiness()[0] else 0
        )
