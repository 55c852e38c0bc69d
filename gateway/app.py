"""Assembly: `create_app(settings)` builds every part of one gateway worker.

No module-level state: two gateways can live in one process (tests do this).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from backends.clock import Clock, MonotonicClock
from gateway import api
from gateway.control.loop import ControlLoop
from gateway.discovery import Discovery
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.health import HealthTracker
from gateway.metrics import GatewayMetrics
from gateway.pools import PoolRegistry, PoolState
from gateway.proxy import AiohttpTransport, Transport
from gateway.router import Router
from gateway.scheduling.policy import POLICY_NAMES, Policy, build_policy
from gateway.scheduling.types import CapacityState, Priority
from gateway.scheduling.weights import static_weights
from gateway.security import ApiKeys, load_keys
from gateway.settings import GatewaySettings

log = logging.getLogger("gateway.app")

MODES = ("auto", *POLICY_NAMES)


class Gateway:
    """Every part of one gateway worker, wired together."""

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        clock: Clock | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or MonotonicClock()
        self.rng = random.Random(settings.seed)
        self.registry = PoolRegistry(settings, self.clock)
        self.mode: str = settings.mode
        self._policies: dict[str, Policy] = {}
        self.metrics = GatewayMetrics(self.registry.snapshot, lambda: self.mode)
        self.health = HealthTracker(
            self.registry,
            settings,
            self.clock,
            on_eject=lambda replica, _: self.metrics.ejections.labels(replica.pool).inc(),
        )
        self._transport = transport
        self.control = ControlLoop(self.registry, settings, self.clock, self.metrics)
        self.keys = ApiKeys(load_keys(settings), settings, self.clock)
        self.router = Router(
            settings=settings,
            registry=self.registry,
            health=self.health,
            policy=self.policy,
            transport=transport or _NotStarted(),
            metrics=self.metrics,
            clock=self.clock,
            batch_admit=lambda: self.control.status.batch_admit_fraction,
            rng=self.rng,
        )
        self.draining = False
        self._tasks: list[asyncio.Task[None]] = []

    # policy and mode ---------------------------------------------------------

    def policy_name(self) -> str:
        """The policy routing now: in `auto`, the state machine's cost or capacity."""
        return self.control.status.effective_mode if self.mode == "auto" else self.mode

    def policy(self) -> Policy:
        name = self.policy_name()
        policy = self._policies.get(name)
        if policy is None:
            policy = self._policies[name] = build_policy(name, self.rng)
        return policy

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise InvalidRequestError(f"mode must be one of: {', '.join(MODES)}")
        if mode != self.mode:
            log.info("mode %s -> %s (operator)", self.mode, mode)
        self.mode = mode
        self.control.set_mode(mode)

    def pool(self, name: str) -> PoolState:
        try:
            return self.registry.get(name)
        except KeyError:
            raise NotFoundError(f"no pool named {name!r}") from None

    # state -------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        # Ejected replicas still count: in panic the gateway tries them. Probe failures do not.
        live = (r for p in self.registry if not p.draining for r in p.replicas.values())
        if not any(r.probe_ok for r in live):
            return False, "no replica in any pool passes its readiness probe"
        return True, "ready"

    def describe(self) -> dict[str, Any]:
        """Live state of every pool, for `GET /v1/pools` and the status page."""
        now = self.clock.now()
        snap = self.registry.snapshot(Priority.INTERACTIVE)
        plan = self.control.status.plan
        live = [p for p in snap.pools if p.capacity_state is not CapacityState.UNAVAILABLE]
        static = static_weights(self.policy_name(), live, snap) if live else {}
        pools = []
        for view in snap.pools:
            state = self.registry.get(view.name)
            weight = view.weight if view.weight is not None else static.get(view.name, 0.0)
            pools.append(
                {
                    "name": view.name,
                    "accelerator": view.accelerator,
                    "protocol": state.config.protocol,
                    "weight": round(weight, 6),
                    "capacity_state": view.capacity_state.value,
                    "control_state": self.registry.control_states.get(
                        view.name, view.capacity_state
                    ).value,
                    "desired_replicas": plan.desired_replicas.get(view.name) if plan else None,
                    "healthy_replicas": len(view.healthy_replicas),
                    "replicas_total": len(view.replicas),
                    "latency_s": round(view.latency_s, 6),
                    "latency_samples": state.latency.samples,
                    "queue_s": round(view.wait_s, 6) if view.healthy_slots else None,
                    "outstanding": view.outstanding,
                    "price_per_hour_usd": view.price_per_hour_usd,
                    "cost_per_image_usd": round(view.cost_per_image_usd, 8),
                    "capacity_images_per_s": round(view.capacity_images_per_s, 4),
                    "requests_per_s": round(state.requests.rate(now), 4),
                    "completions_per_s": round(state.completions.rate(now), 4),
                    "error_rate": round(view.error_rate, 4),
                    "draining": state.draining,
                    "shapes": sorted(view.shapes) if view.shapes is not None else None,
                    "replicas": [
                        {
                            "url": r.url,
                            "healthy": r.healthy(now),
                            "probe_ok": r.probe_ok,
                            "ejected": r.ejected(now),
                            "ejections": r.ejections,
                            "in_flight": r.in_flight,
                            "reported_queue_depth": r.reported_queue_depth,
                            "last_error": r.last_error,
                        }
                        for r in state.replicas.values()
                    ],
                }
            )
        status = self.control.status
        allocation = status.allocation
        return {
            "mode": self.mode,
            "effective_mode": status.effective_mode,
            "policy": self.policy_name(),
            "arrival_rate_per_s": round(snap.arrival_rate_per_s, 4),
            "demand_per_s": {
                p.value: round(self.registry.arrivals_by_class[p].rate(now), 4) for p in Priority
            },
            "batch_admit_fraction": round(status.batch_admit_fraction, 4),
            "spend_limited": status.spend_limited,
            "projected_spend_per_hour_usd": (
                round(allocation.spend_per_hour_usd, 4) if allocation is not None else None
            ),
            "deficit_per_s": (
                round(allocation.total_deficit_per_s, 4) if allocation is not None else None
            ),
            "transitions": [
                {
                    "at_s": round(t.at, 3),
                    "subject": t.subject,
                    "from": t.old,
                    "to": t.new,
                    "reason": t.reason,
                }
                for t in list(status.transitions)[-20:]
            ],
            "pools": pools,
        }

    # lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Open the upstream session and start background tasks (inside the event loop)."""
        transport = self._transport or AiohttpTransport(
            connect_timeout_s=self.settings.connect_timeout_s,
            max_connections_per_host=self.settings.max_connections_per_host,
        )
        self._transport = transport
        self.router.transport = transport
        discovery = Discovery(self.registry, self.settings, self.clock, fetch=transport.get_json)
        await discovery.refresh()
        # One probe round before serving: replicas are not trusted until they answer.
        await self.health.probe_all(self._probe)
        self.control.tick()
        self._tasks = [
            asyncio.create_task(self.health.run(self._probe), name="health-probes"),
            asyncio.create_task(self.control.run(), name="control-loop"),
            asyncio.create_task(discovery.run(), name="discovery"),
        ]

    async def _probe(self, url: str) -> tuple[bool, int | None]:
        assert self._transport is not None
        status, body = await self._transport.get_json(
            url + "/readiness", self.settings.probe_timeout_s
        )
        depth = body.get("queue_depth") if isinstance(body, dict) else None
        return status == 200, depth if isinstance(depth, int) else None

    async def drain(self) -> None:
        """On SIGTERM: readiness turns 503 at once; new and in-flight requests are still
        served for `drain_delay_s` (so the load balancer can deregister us), then the
        in-flight ones are waited for (at most `shutdown_timeout_s`) before the server stops.
        """
        self.draining = True
        log.info("draining: readiness 503, serving for %.0f s more", self.settings.drain_delay_s)
        await self.clock.sleep(self.settings.drain_delay_s)
        try:
            async with asyncio.timeout(self.settings.shutdown_timeout_s):
                while self.router.budget.active_requests > 0:
                    await asyncio.sleep(0.05)
        except TimeoutError:
            log.warning(
                "shutdown timeout with %d requests in flight", self.router.budget.active_requests
            )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._transport is not None:
            await self._transport.close()


class _NotStarted:
    """The transport before `Gateway.start()`: refuses to send."""

    async def post(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the gateway has not been started")

    async def get_json(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the gateway has not been started")

    async def close(self) -> None:
        return None


def create_app(
    settings: GatewaySettings,
    *,
    clock: Clock | None = None,
    transport: Transport | None = None,
) -> FastAPI:
    """The gateway ASGI app; its lifespan starts and stops the background parts."""
    gateway = Gateway(settings, clock=clock, transport=transport)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = api.FastPathApp(title="sd-gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = gateway
    app.state.admin_app = api.install(app, gateway)
    return app
