"""`sd-gateway demo`: simulated pools and the gateway on 127.0.0.1, driven by a real client.

Everything runs in one process on one event loop, each server on its own
loopback socket: four simulated model servers (inf2 x2, g5, g6), the gateway
in front of them, and an open-loop client. The load tells a story: a ramp to
a steady rate; a capacity shortfall in the cheap inf2 pool (capacity errors,
then a replica lost); recovery. A line a second shows where traffic goes.
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
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from backends.local import start_backend
from backends.serving import RunningServer, running_server
from gateway.app import create_app as create_gateway
from gateway.settings import GatewaySettings, settings_from_dict

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "config" / "demo.yaml"
# (pool, profile) per simulated replica, in the order of config/demo.yaml's replicas.
REPLICAS = (("inf2", "inf2"), ("inf2", "inf2"), ("g5", "g5-cuda"), ("g6", "g6"))
BATCH_SHARE = 0.2


@dataclasses.dataclass
class Outcome:
    at_s: float
    status: int
    pool: str
    attempts: int
    latency_s: float
    cost_usd: float
    priority: str


@dataclasses.dataclass
class Story:
    """When each act of the demo begins, as fractions of the duration."""

    shortfall: float = 0.35
    replica_lost: float = 0.5
    recovery: float = 0.7


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


async def _client_request(
    client: httpx.AsyncClient, started: float, rng: random.Random, out: list[Outcome]
) -> None:
    priority = "batch" if rng.random() < BATCH_SHARE else "interactive"
    sent = time.perf_counter()
    try:
        r = await client.post(
            "/v1/images",
            json={"prompt": f"a lighthouse at dusk #{rng.randrange(10**6)}"},
            headers={"X-Priority": priority},
        )
        status, pool = r.status_code, r.headers.get("X-Gateway-Pool", "-")
        attempts = int(r.headers.get("X-Gateway-Attempts", "0"))
        cost = float(r.headers.get("X-Image-Cost-USD", "0"))
    except httpx.HTTPError:
        status, pool, attempts, cost = 0, "-", 0, 0.0
    done = time.perf_counter()
    out.append(Outcome(done - started, status, pool, attempts, done - sent, cost, priority))


def _rate_at(t: float, duration_s: float, rate_per_s: float) -> float:
    ramp = 0.15 * duration_s
    return rate_per_s * min(1.0, 0.2 + 0.8 * t / ramp) if ramp else rate_per_s


async def _drive_load(
    url: str,
    backends: list[tuple[str, RunningServer]],
    duration_s: float,
    rate_per_s: float,
    out: list[Outcome],
    story: Story,
) -> None:
    rng = random.Random(7)
    inf2 = [s for pool, s in backends if pool == "inf2"]
    Act = tuple[float, str, list[tuple[RunningServer, dict[str, bool] | None]]]
    acts: list[Act] = [
        (
            story.shortfall,
            "inf2 returns capacity errors",
            [(s, {"capacity_error": True}) for s in inf2],
        ),
        (story.replica_lost, "inf2 loses a replica", [(inf2[1], {"unavailable": True})]),
        (story.recovery, "inf2 capacity is back", [(s, None) for s in inf2]),
    ]
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    async with (
        httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client,
        httpx.AsyncClient(timeout=5) as admin,
    ):
        started = time.perf_counter()
        tasks: set[asyncio.Task[None]] = set()
        next_report = 1.0
        while (t := time.perf_counter() - started) < duration_s:
            while acts and t >= acts[0][0] * duration_s:
                _, title, faults = acts.pop(0)
                print(f"[{t:5.1f}s] >>> {title}", flush=True)
                for server, fault in faults:
                    if fault is None:
                        await admin.delete(server.url + "/admin/faults")
                    else:
                        await admin.post(server.url + "/admin/faults", json=fault)
            task = asyncio.create_task(_client_request(client, started, rng, out))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if t >= next_report:
                _report_line(t, out, await client.get("/v1/pools"))
                next_report += 1.0
            await asyncio.sleep(rng.expovariate(_rate_at(t, duration_s, rate_per_s)))
        if tasks:
            await asyncio.wait(tasks, timeout=30)


def _report_line(t: float, out: list[Outcome], pools: httpx.Response) -> None:
    recent = [o for o in out if o.at_s > t - 1.0]
    share = Counter(o.pool for o in recent)
    state = {p["name"]: p for p in pools.json()["pools"]}
    cells = []
    for name, p in state.items():
        cells.append(
            f"{name}:{share.get(name, 0):>2}/s w={p['weight']:.2f} "
            f"{p['capacity_state'][:5]} {p['healthy_replicas']}/{p['replicas_total']}"
        )
    failures = sum(1 for o in out if o.status != 200)
    failovers = sum(1 for o in out if o.attempts > 1)
    print(
        f"[{t:5.1f}s] " + " | ".join(cells) + f" | failovers {failovers} failures {failures}",
        flush=True,
    )


def summarize(out: list[Outcome], settings: GatewaySettings) -> int:
    ok = [o for o in out if o.status == 200]
    failed = len(out) - len(ok)
    print("\n== summary")
    print(f"requests {len(out)}, images served {len(ok)}, client-visible failures {failed}")
    for cls, slo in (
        ("interactive", settings.slo.interactive_seconds),
        ("batch", settings.slo.batch_seconds),
    ):
        lat = [o.latency_s for o in ok if o.priority == cls]
        if lat:
            met = sum(1 for x in lat if x <= slo) / len(lat)
            p50 = statistics.median(lat)
            p95 = sorted(lat)[int(0.95 * (len(lat) - 1))]
            print(f"{cls:<12} p50 {p50:.2f} s  p95 {p95:.2f} s  SLO {slo:g} s met by {met:.1%}")
    if ok:
        per_k = 1000 * sum(o.cost_usd for o in ok) / len(ok)
        print(f"average cost ${per_k:.4f} per 1k images")
        share = Counter(o.pool for o in ok)
        print(
            "traffic share " + ", ".join(f"{k} {v / len(ok):.0%}" for k, v in share.most_common())
        )
    print(f"failovers {sum(1 for o in out if o.attempts > 1)}")
    return 0 if failed == 0 else 1


async def _run(duration_s: float, port: int, rate_per_s: float, keep_serving: bool) -> int:
    async with start_backends() as backends:
        ports: dict[str, list[int]] = {}
        for pool, server in backends:
            ports.setdefault(pool, []).append(server.port)
        settings = demo_settings(ports, port)
        app = create_gateway(settings)
        async with running_server(app, port=port, on_drain=app.state.gateway.drain) as gw:
            print(f"gateway on {gw.url}  (status: {gw.url}/v1/pools, metrics: {gw.url}/metrics)")
            for pool, server in backends:
                print(f"  {pool:<5} replica {server.url}")
            out: list[Outcome] = []
            await _drive_load(gw.url, backends, duration_s, rate_per_s, out, Story())
            code = summarize(out, settings)
            if keep_serving:
                print(f"\nserving on {gw.url} until Ctrl-C", flush=True)
                await asyncio.Event().wait()
            return code


def run_demo(
    *, duration_s: float = 45.0, port: int = 0, rate_per_s: float = 1.5, keep_serving: bool = False
) -> int:
    """Run the demo; returns 0 when no client request failed."""
    try:
        return asyncio.run(_run(duration_s, port, rate_per_s, keep_serving))
    except KeyboardInterrupt:
        print("\nstopped", file=sys.stderr)
        return 130
