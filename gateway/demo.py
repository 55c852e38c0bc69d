"""`sd-gateway demo`: simulated pools and the gateway on 127.0.0.1, driven by a real client.

Everything runs in one process on one event loop, each server on its own
loopback socket: four simulated model servers (inf2 x2, g5, g6), the gateway
in front of them, and an open-loop client sending interactive and batch
requests over HTTP. The load tells a story: a ramp to a steady rate; a
capacity shortfall in the cheap inf2 pool (capacity errors, then a replica
lost); recovery. A live table (plain lines when stdout is not a terminal)
shows where traffic goes; a summary compares the cost with an even split.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from backends.local import start_backend
from backends.serving import RunningServer, run_event_loop, running_server
from gateway.app import create_app as create_gateway
from gateway.cli import server_options
from gateway.settings import GatewaySettings, settings_from_dict

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "config" / "demo.yaml"
# (pool, profile) per simulated replica, in the order of config/demo.yaml's replicas.
REPLICAS = (("inf2", "inf2"), ("inf2", "inf2"), ("g5", "g5-cuda"), ("g6", "g6"))
BATCH_SHARE = 0.2
MAX_BATCH_RETRIES = 5
LATENCY_WINDOW_S = 10.0


@dataclasses.dataclass
class Outcome:
    at_s: float
    status: int
    pool: str
    attempts: int
    latency_s: float
    cost_usd: float
    priority: str


@dataclasses.dataclass(frozen=True)
class Act:
    at: float  # fraction of the duration
    title: str
    faults: tuple[tuple[int, dict[str, bool] | None], ...]  # (inf2 replica index, fault or clear)


STORY = (
    Act(
        0.4,
        "inf2 returns capacity errors",
        ((0, {"capacity_error": True}), (1, {"capacity_error": True})),
    ),
    Act(0.5, "inf2 loses a replica", ((1, {"unavailable": True}),)),
    Act(0.6, "inf2 capacity is back", ((0, None), (1, None))),
)


def demo_settings(ports: dict[str, list[int]], gateway_port: int) -> GatewaySettings:
    data: dict[str, Any] = yaml.safe_load(DEMO_CONFIG.read_text())
    for pool in data["pools"]:
        pool["replicas"] = [f"http://127.0.0.1:{p}" for p in ports[pool["name"]]]
    data |= {
        "host": "127.0.0.1",
        "port": gateway_port,
        "probe_interval_s": 0.5,
        "probe_timeout_s": 0.5,
        "capacity_hold_s": 3.0,
        "capacity_mode_hold_s": 5.0,
        "recovery_hold_s": 3.0,
        "outlier_base_ejection_s": 5.0,
        "slow_start_s": 3.0,
        "seed": 1,
    }
    return settings_from_dict(data)


@contextlib.asynccontextmanager
async def start_backends() -> AsyncIterator[list[tuple[str, RunningServer]]]:
    async with contextlib.AsyncExitStack() as stack:
        servers = []
        for i, (pool, profile) in enumerate(REPLICAS):
            server = await stack.enter_async_context(
                start_backend(profile=profile, seed=i, max_queue=8)
            )
            servers.append((pool, server))
        yield servers


class Demo:
    """The client side of the demo: load, story, live view, summary."""

    def __init__(
        self, url: str, backends: list[tuple[str, RunningServer]], settings: GatewaySettings
    ) -> None:
        self.url = url
        self.inf2 = [s for pool, s in backends if pool == "inf2"]
        self.settings = settings
        self.outcomes: list[Outcome] = []
        self.started = time.perf_counter()
        self.rng = random.Random(7)
        self.last_pools: dict[str, Any] = {}
        self.events: list[str] = []
        self.deferred = 0  # batch requests shed and sent again after Retry-After

    def now(self) -> float:
        return time.perf_counter() - self.started

    async def request(self, client: httpx.AsyncClient) -> None:
        """One client request; batch work that is shed comes back after its Retry-After."""
        priority = "batch" if self.rng.random() < BATCH_SHARE else "interactive"
        body = {"prompt": f"a lighthouse at dusk #{self.rng.randrange(10**6)}"}
        sent = time.perf_counter()
        for _ in range(1 + MAX_BATCH_RETRIES):
            try:
                r = await client.post("/v1/images", json=body, headers={"X-Priority": priority})
                status, pool = r.status_code, r.headers.get("X-Gateway-Pool", "-")
                attempts = int(r.headers.get("X-Gateway-Attempts", "0"))
                cost = float(r.headers.get("X-Image-Cost-USD", "0"))
            except httpx.HTTPError:
                status, pool, attempts, cost = 0, "-", 0, 0.0
                break
            if status != 429 or priority != "batch":
                break
            self.deferred += 1
            await asyncio.sleep(min(float(r.headers.get("Retry-After", "1")), 10.0))
        done = time.perf_counter()
        self.outcomes.append(
            Outcome(done - self.started, status, pool, attempts, done - sent, cost, priority)
        )

    async def drive(self, duration_s: float, rate_per_s: float) -> None:
        acts = list(STORY)
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        async with (
            httpx.AsyncClient(base_url=self.url, timeout=30, limits=limits) as client,
            httpx.AsyncClient(timeout=5) as admin,
        ):
            tasks: set[asyncio.Task[None]] = set()
            while (t := self.now()) < duration_s:
                while acts and t >= acts[0].at * duration_s:
                    act = acts.pop(0)
                    self.events.append(f"{t:5.1f}s  {act.title}")
                    for index, fault in act.faults:
                        url = self.inf2[index].url + "/admin/faults"
                        await (admin.delete(url) if fault is None else admin.post(url, json=fault))
                task = asyncio.create_task(self.request(client))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                ramp = 0.15 * duration_s
                rate = rate_per_s * min(1.0, 0.2 + 0.8 * t / ramp) if ramp else rate_per_s
                await asyncio.sleep(self.rng.expovariate(rate))
            if tasks:
                await asyncio.wait(tasks, timeout=30)

    # the live view -------------------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        now = self.now()
        recent = [o for o in self.outcomes if o.at_s > now - LATENCY_WINDOW_S and o.status == 200]
        rows = []
        for p in self.last_pools.get("pools", []):
            lat = sorted(o.latency_s for o in recent if o.pool == p["name"])
            rows.append(
                {
                    "pool": p["name"],
                    "state": p.get("control_state") or p["capacity_state"],
                    "weight": p["weight"],
                    "rps": sum(1 for o in recent if o.pool == p["name"] and o.at_s > now - 1.0),
                    "p50": statistics.median(lat) if lat else None,
                    "p95": lat[int(0.95 * (len(lat) - 1))] if lat else None,
                    "queue_s": p["queue_s"],
                    "cost": p["cost_per_image_usd"],
                    "healthy": f"{p['healthy_replicas']}/{p['replicas_total']}",
                }
            )
        return rows

    def headline(self) -> str:
        failures = sum(1 for o in self.outcomes if o.status != 200)
        failovers = sum(1 for o in self.outcomes if o.attempts > 1)
        mode = self.last_pools.get("effective_mode", "?")
        return (
            f"t={self.now():5.1f}s  mode {self.last_pools.get('mode', '?')}/{mode}  "
            f"requests {len(self.outcomes)}  failovers {failovers}  client errors {failures}"
        )

    def table(self) -> Table:
        table = Table(title=self.headline(), caption=" | ".join(self.events[-3:]) or None)
        for col in (
            "pool",
            "state",
            "healthy",
            "weight",
            "req/s",
            "p50 s",
            "p95 s",
            "queue s",
            "$/image",
        ):
            table.add_column(col, justify="left" if col in ("pool", "state") else "right")
        for r in self.rows():
            table.add_row(
                r["pool"], r["state"], r["healthy"], f"{r['weight']:.2f}", str(r["rps"]),
                _f(r["p50"], 2), _f(r["p95"], 2), _f(r["queue_s"], 2), _f(r["cost"], 6),
            )  # fmt: skip
        return table

    def line(self) -> str:
        cells = [
            f"{r['pool']} {r['state'][:5]} {r['healthy']} w={r['weight']:.2f} {r['rps']}/s "
            f"p50={_f(r['p50'], 2)}"
            for r in self.rows()
        ]
        return self.headline() + " | " + " | ".join(cells)

    async def watch(self, console: Console, live: bool) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
            view = Live(self.table(), console=console, refresh_per_second=4) if live else None
            seen_events = 0
            with view or contextlib.nullcontext():
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        self.last_pools = (await client.get("/v1/pools")).json()
                    if view is not None:
                        view.update(self.table())
                    else:
                        for event in self.events[seen_events:]:
                            print(f">>> {event}", flush=True)
                        seen_events = len(self.events)
                        print(self.line(), flush=True)
                    await asyncio.sleep(1.0)

    # the summary ---------------------------------------------------------------

    def summary(self) -> list[str]:
        ok = [o for o in self.outcomes if o.status == 200]
        failed = len(self.outcomes) - len(ok)
        lines = [
            f"requests {len(self.outcomes)}, images served {len(ok)}, "
            f"client-visible failures {failed}, failovers "
            f"{sum(1 for o in self.outcomes if o.attempts > 1)}, batch deferrals {self.deferred}"
        ]
        slo = self.settings.slo
        for cls, objective in (
            ("interactive", slo.interactive_seconds),
            ("batch", slo.batch_seconds),
        ):
            lat = sorted(o.latency_s for o in ok if o.priority == cls)
            if lat:
                met = sum(1 for x in lat if x <= objective) / len(lat)
                p95 = lat[int(0.95 * (len(lat) - 1))]
                lines.append(
                    f"{cls:<12} p50 {statistics.median(lat):.2f} s  p95 {p95:.2f} s"
                    f"  SLO {objective:g} s met by {met:.1%}"
                )
        if ok:
            ours = 1000 * statistics.fmean(o.cost_usd for o in ok)
            even = 1000 * statistics.fmean(self.pool_costs().values())
            share = Counter(o.pool for o in ok)
            lines += [
                f"average cost ${ours:.4f} per 1k images; an even split over the pools at the same "
                f"measured latencies: ${even:.4f} per 1k ({1 - ours / even:.0%} saved)",
                "traffic share "
                + ", ".join(f"{k} {v / len(ok):.0%}" for k, v in share.most_common()),
            ]
        return lines

    def pool_costs(self) -> dict[str, float]:
        """Measured $/image per pool: the mean its requests cost, else the gateway's estimate."""
        costs = {}
        for p in self.last_pools.get("pools", []):
            mine = [o.cost_usd for o in self.outcomes if o.status == 200 and o.pool == p["name"]]
            costs[p["name"]] = statistics.fmean(mine) if mine else p["cost_per_image_usd"]
        return costs

    @property
    def failures(self) -> int:
        return sum(1 for o in self.outcomes if o.status != 200)


def _f(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


async def _run(
    duration_s: float, port: int, rate_per_s: float, keep_serving: bool, live: bool
) -> int:
    console = Console()
    async with start_backends() as backends:
        ports: dict[str, list[int]] = {}
        for pool, server in backends:
            ports.setdefault(pool, []).append(server.port)
        settings = demo_settings(ports, port)
        app = create_gateway(settings)
        options = server_options(settings)
        async with running_server(
            app, port=port, on_drain=app.state.gateway.drain, **options
        ) as gw:
            print(f"gateway {gw.url}   status page {gw.url}/   pools {gw.url}/v1/pools", flush=True)
            demo = Demo(gw.url, backends, settings)
            watcher = asyncio.create_task(demo.watch(console, live))
            try:
                await demo.drive(duration_s, rate_per_s)
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            print("\n== summary")
            for line in demo.summary():
                print(line)
            if keep_serving:
                print(f"\nserving on {gw.url} until Ctrl-C", flush=True)
                await asyncio.Event().wait()
            return 0 if demo.failures == 0 else 1


def run_demo(
    *,
    duration_s: float = 60.0,
    port: int = 0,
    rate_per_s: float = 1.0,
    keep_serving: bool = False,
    live: bool | None = None,
    argv: Sequence[str] = (),
) -> int:
    """Run the demo; returns 0 when no client request failed."""
    if live is None:
        live = sys.stdout.isatty()
    try:
        return run_event_loop(_run(duration_s, port, rate_per_s, keep_serving, live))
    except KeyboardInterrupt:
        print("\nstopped", file=sys.stderr)
        return 130
