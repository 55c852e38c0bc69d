"""A gateway in front of simulated pools, all on 127.0.0.1, plus a bounded load driver.

Used by the integration tests and by `python -m loadtest.failover`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from backends.local import start_backend
from backends.serving import RunningServer, running_server
from gateway.app import Gateway, create_app
from gateway.cli import server_options
from gateway.settings import settings_from_dict

# (pool, profile, replicas, latency_s, price, shapes)
DEFAULT_POOLS: tuple[tuple[str, str, int, float, float, list[str] | None], ...] = (
    ("inf2", "inf2", 2, 0.05, 0.7582, ["512x512"]),
    ("g5", "g5-cuda", 1, 0.08, 1.006, None),
    ("g6", "g6", 1, 0.08, 0.8048, None),
)

FAST_HEALTH: dict[str, Any] = {
    "probe_interval_s": 0.2,
    "probe_timeout_s": 0.2,
    "capacity_hold_s": 10.0,
    "slow_start_s": 0.5,
    "seed": 3,
    "slo": {"interactive_seconds": 1.0, "batch_seconds": 30.0},
}


@dataclass
class Stack:
    gateway: RunningServer
    app_gateway: Gateway
    backends: dict[str, list[RunningServer]]
    client: httpx.AsyncClient
    admin: httpx.AsyncClient

    async def fault(self, pool: str, **faults: Any) -> None:
        for server in self.backends[pool]:
            r = await self.admin.post(server.url + "/admin/faults", json=faults)
            r.raise_for_status()

    async def requests_seen(self, pool: str) -> float:
        """Image requests the pool's backends have received, counted on arrival."""
        total = 0.0
        for server in self.backends[pool]:
            text = (await self.admin.get(server.url + "/metrics")).text
            for m in re.finditer(r"^sd_backend_received_total\{[^}]*\} ([0-9.e+]+)$", text, re.M):
                total += float(m.group(1))
        return total


@contextlib.asynccontextmanager
async def start_stack(
    pools: tuple[tuple[str, str, int, float, float, list[str] | None], ...] = DEFAULT_POOLS,
    backend_options: dict[str, dict[str, Any]] | None = None,
    **overrides: Any,
) -> AsyncIterator[Stack]:
    backend_options = backend_options or {}
    async with contextlib.AsyncExitStack() as stack:
        backends: dict[str, list[RunningServer]] = {}
        config_pools = []
        for i, (name, profile, count, latency, price, shapes) in enumerate(pools):
            servers = []
            for j in range(count):
                opts: dict[str, Any] = {
                    "profile": profile,
                    "latency_s": latency,
                    "seed": 10 * i + j,
                    "max_queue": 32,
                }
                opts |= backend_options.get(name, {})
                servers.append(await stack.enter_async_context(start_backend(**opts)))
            backends[name] = servers
            pool: dict[str, Any] = {
                "name": name,
                "accelerator": profile,
                "price_per_hour": price,
                "expected_latency_seconds": latency,
                "replicas": [s.url for s in servers],
            }
            if shapes is not None:
                pool["shapes"] = shapes
            config_pools.append(pool)
        settings = settings_from_dict(FAST_HEALTH | {"pools": config_pools} | overrides)
        app = create_app(settings)
        gw = await stack.enter_async_context(running_server(app, **server_options(settings)))
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=gw.url, timeout=30, limits=limits)
        )
        admin = await stack.enter_async_context(httpx.AsyncClient(timeout=5))
        yield Stack(gw, app.state.gateway, backends, client, admin)


@dataclass
class Result:
    sent_at: float
    status: int
    pool: str
    attempts: int


@dataclass
class Load:
    """A closed-loop load: `workers` clients, each sending back to back."""

    results: list[Result] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    @property
    def failures(self) -> list[Result]:
        return [r for r in self.results if r.status != 200]

    def share(self, pool: str, since_s: float = 0.0) -> float:
        chosen = [r for r in self.results if r.sent_at >= since_s]
        return sum(1 for r in chosen if r.pool == pool) / max(1, len(chosen))


async def closed_loop(
    client: httpx.AsyncClient,
    duration_s: float,
    *,
    workers: int = 8,
    load: Load | None = None,
    body: dict[str, Any] | None = None,
    max_requests: int = 20_000,
) -> Load:
    """Send requests for `duration_s` (and at most `max_requests`); stops by itself."""
    load = load or Load()
    body = body or {"prompt": "a lighthouse"}
    deadline = time.perf_counter() + duration_s

    async def worker() -> None:
        while time.perf_counter() < deadline and len(load.results) < max_requests:
            sent = time.perf_counter() - load.started
            try:
                r = await client.post("/v1/images", json=body)
                res = Result(
                    sent,
                    r.status_code,
                    r.headers.get("X-Gateway-Pool", "-"),
                    int(r.headers.get("X-Gateway-Attempts", "0")),
                )
            except httpx.HTTPError:
                res = Result(sent, 0, "-", 0)
            load.results.append(res)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return load


async def last_increase(stack: Stack, pool: str, watch_s: float, step_s: float = 0.05) -> float:
    """Watch the pool's backend request counters; seconds from now to their last increase."""
    start = time.perf_counter()
    last_value = await stack.requests_seen(pool)
    last_change = 0.0
    while (now := time.perf_counter() - start) < watch_s:
        await asyncio.sleep(step_s)
        value = await stack.requests_seen(pool)
        if value != last_value:
            last_value, last_change = value, now
    return last_change
