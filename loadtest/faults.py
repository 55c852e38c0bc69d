"""The fault-injection suite: real processes, real sockets, bounded in count and time.

    python -m loadtest.faults [--out docs/reliability.json]

Each scenario runs a gateway (in this process) in front of pools whose
replicas are separate `sd-backend` processes on 127.0.0.1 (or, for the
protocol faults, small misbehaving servers), drives a closed-loop load of a
few clients, injects one fault, and reports: client-visible failures, seconds
until the gateway stopped sending new work to the faulty pool or replica, and
whether traffic returned after the fault cleared (no restart).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from backends.serving import running_server
from gateway.app import Gateway, create_app
from gateway.cli import server_options
from gateway.settings import settings_from_dict
from loadtest.stack import Load, closed_loop

BASE: dict[str, Any] = {
    "probe_interval_s": 0.25,
    "probe_timeout_s": 0.25,
    "capacity_hold_s": 2.0,
    "slow_start_s": 0.5,
    "outlier_base_ejection_s": 2.0,
    "control_interval_s": 0.25,
    "capacity_mode_hold_s": 1.0,
    "recovery_hold_s": 0.5,
    "drain_delay_s": 0.0,
    "seed": 5,
    "slo": {"interactive_seconds": 1.5, "batch_seconds": 30.0},
}


@dataclass
class Replica:
    pool: str
    url: str
    proc: asyncio.subprocess.Process | None = None
    server: asyncio.Server | None = None


@dataclass
class Outcome:
    scenario: str
    requests: int
    client_failures: int
    expected_failures: str
    route_around_s: float | None
    recovered: bool
    notes: str = ""
    statuses: dict[str, int] = field(default_factory=dict)


async def spawn_backend(
    profile: str, latency_s: float, seed: int
) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "backends", "serve", "--port", "0", "--profile", profile,
        "--latency-s", str(latency_s), "--cold-start-s", "0", "--seed", str(seed),
        "--max-queue", "32", "--enable-fault-injection", "--log-level", "warning",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise RuntimeError("backend exited at start")
            if m := re.search(rb"on (http://\S+)", line):
                return proc, m.group(1).decode()


async def truncating_server() -> tuple[asyncio.Server, str]:
    """Ready to probes; answers images with headers and half a body, then hangs up."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length:\s*(\d+)", head)
            if length:
                await reader.readexactly(int(length.group(1)))
            if head.startswith(b"GET /readiness"):
                body = b'{"ready": true, "queue_depth": 0}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                    + body
                )
            else:
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"x-inference-seconds: 0.05\r\ncontent-length: 100000\r\n\r\n" + b"{" * 1000
                )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@contextlib.asynccontextmanager
async def stack(
    layout: list[tuple[str, str, int, float, float]], *, special: dict[str, str] | None = None
) -> AsyncIterator[tuple[Gateway, str, list[Replica]]]:
    """Backends as processes, then a gateway in front. `special`: pool -> 'truncate'."""
    special = special or {}
    replicas: list[Replica] = []
    try:
        pools = []
        for i, (name, profile, count, latency, price) in enumerate(layout):
            urls = []
            for j in range(count):
                if name in special:
                    server, url = await truncating_server()
                    replicas.append(Replica(name, url, server=server))
                else:
                    proc, url = await spawn_backend(profile, latency, 10 * i + j)
                    replicas.append(Replica(name, url, proc=proc))
                urls.append(url)
            pools.append(
                {
                    "name": name,
                    "accelerator": profile,
                    "price_per_hour": price,
                    "expected_latency_seconds": latency,
                    "replicas": urls,
                    "read_timeout_s": 1.0,
                }
            )
        settings = settings_from_dict(BASE | {"pools": pools})
        app = create_app(settings)
        async with running_server(app, **server_options(settings)) as gw:
            yield app.state.gateway, gw.url, replicas
    finally:
        for r in replicas:
            if r.proc is not None and r.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(r.proc.pid, signal.SIGKILL)
                await r.proc.wait()
            if r.server is not None:
                r.server.close()


LAYOUT = [("inf2", "inf2", 2, 0.05, 0.7582), ("g5", "g5-cuda", 2, 0.08, 1.006)]


def _attempts_to(gateway: Gateway, pool: str) -> float:
    return sum(
        sample.value
        for metric in gateway.metrics.attempts.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels.get("pool") == pool
    )


def _routed_around(gateway: Gateway, pool: str, replica: str | None) -> bool:
    """True once the gateway no longer offers the pool (or the replica) to new requests."""
    now = gateway.clock.now()
    state = gateway.registry.get(pool)
    if replica is not None:
        return not state.replicas[replica].healthy(now)
    view = next(p for p in gateway.registry.snapshot().pools if p.name == pool)
    return view.capacity_state.value in ("constrained", "unavailable")


async def time_to_route_around(
    gateway: Gateway, pool: str, replica: str | None, limit_s: float
) -> float | None:
    """Seconds from now until the fault is routed around, or None within `limit_s`."""
    start = time.perf_counter()
    while time.perf_counter() - start < limit_s:
        if _routed_around(gateway, pool, replica):
            return time.perf_counter() - start
        await asyncio.sleep(0.01)
    return None


async def run_scenario(
    name: str,
    expected: str,
    inject: Callable[[Gateway, list[Replica], httpx.AsyncClient], Awaitable[str | None]],
    clear: Callable[[Gateway, list[Replica], httpx.AsyncClient], Awaitable[None]] | None,
    *,
    watch_pool: str = "inf2",
    watch_replica: int | None = None,
    special: dict[str, str] | None = None,
    layout: list[tuple[str, str, int, float, float]] = LAYOUT,
    window: tuple[float, float] | None = None,
) -> Outcome:
    async with stack(layout, special=special) as (gateway, url, replicas):
        limits = httpx.Limits(max_connections=32)
        async with (
            httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client,
            httpx.AsyncClient(timeout=5) as admin,
        ):
            load = Load()
            await closed_loop(client, 1.0, workers=4, load=load)
            # Load runs past the 5 s the route-around is given, so the fault stays exercised.
            task = asyncio.create_task(closed_loop(client, 5.5, workers=4, load=load))
            await asyncio.sleep(0.3)
            replica = None
            if watch_replica is not None:
                replica = [r for r in replicas if r.pool == watch_pool][watch_replica].url
            injected_at = time.perf_counter() - load.started
            note = await inject(gateway, replicas, admin)
            route_around = await time_to_route_around(gateway, watch_pool, replica, 5.0)
            await task
            recovered = True
            if clear is not None:
                await clear(gateway, replicas, admin)
                before = _attempts_to(gateway, watch_pool)
                await closed_loop(client, 4.0, workers=4, load=load)
                recovered = _attempts_to(gateway, watch_pool) > before
    statuses: dict[str, int] = {}
    for r in load.results:
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
    if window is not None:
        # failures outside the window in which no pool had room
        begin, end = injected_at + window[0], injected_at + window[1]
        late = [r for r in load.failures if not begin <= r.sent_at <= end]
        during = len(load.failures) - len(late)
        note = f"{note}; {during} failed while no pool was up, {len(late)} outside that window"
    return Outcome(
        name, len(load.results), len(load.failures), expected,
        None if route_around is None else round(route_around, 2),
        recovered, note or "", statuses,
    )  # fmt: skip


async def _faults(
    admin: httpx.AsyncClient, replicas: list[Replica], pool: str, **faults: Any
) -> None:
    for r in replicas:
        if r.pool == pool:
            await admin.post(r.url + "/admin/faults", json=faults)


async def _clear(admin: httpx.AsyncClient, replicas: list[Replica], pool: str) -> None:
    for r in replicas:
        if r.pool == pool and r.proc is not None and r.proc.returncode is None:
            await admin.delete(r.url + "/admin/faults")


async def scenarios() -> list[Outcome]:
    out: list[Outcome] = []

    async def clear_inf2(g: Gateway, reps: list[Replica], a: httpx.AsyncClient) -> None:
        await _clear(a, reps, "inf2")

    async def kill_one(g: Gateway, reps: list[Replica], a: httpx.AsyncClient) -> str:
        victim = next(r for r in reps if r.pool == "inf2")
        assert victim.proc is not None
        os.killpg(victim.proc.pid, signal.SIGKILL)
        return "kill -9 of one inf2 replica; the other keeps serving"

    out.append(
        await run_scenario("kill -9 a replica mid-load", "0", kill_one, None, watch_replica=0)
    )

    async def stop_pool(g: Gateway, reps: list[Replica], a: httpx.AsyncClient) -> str:
        for r in reps:
            if r.pool == "inf2" and r.proc is not None:
                os.killpg(r.proc.pid, signal.SIGKILL)
        return "both inf2 processes killed"

    out.append(await run_scenario("stop a whole pool", "0", stop_pool, None))

    async def hang(g: Gateway, reps: list[Replica], a: httpx.AsyncClient) -> str:
        await _faults(a, reps, "inf2", latency_multiplier=1000.0)
        return "inf2 accepts and passes probes but answers nothing for 50 s (read timeout 1 s)"

    out.append(await run_scenario("a pool that hangs after accepting", "0", hang, clear_inf2))

    async def all_429(g: Gateway, reps: list[Replica], a: httpx.AsyncClient) -> str:
        await _faults(a, reps, "inf2", capacity_error=True)
        return "every inf2 answer is 429 insufficient capacity"

    out.append(await run_scenario("a pool answering 429 to everything", "0", all_429, clear_inf2))

    flapping: list[asyncio.Task[None]] = []

    async def flap(g: Gateway, reps: list[Replica], a: httpx.AsyncClient) -> str:
        async def toggle() -> None:
            up = False
            for _ in range(20):
                await _faults(a, reps, "inf2", unavailable=not up)
                up = not up
                await asyncio.sleep(0.3)

        flapping.append(asyncio.create_task(toggle()))
        return "inf2 readiness flips every 0.3 s"

    async def stop_flap(g: Gateway, reps: list[Replica], a: httpx.AsyncClient) -> None:
        for t in flapping:
            await t
        await _clear(a, reps, "inf2")

    out.append(await run_scenario("flapping readiness", "0", flap, stop_flap))

    out.append(
        await run_scenario(
            "a backend that closes the connection mid-body",
            "until ejected (bytes already sent cannot be retried)",
            lambda g, r, a: _note("inf2 sends headers and 1 kB of a 100 kB body, then hangs up"),
            None,
            special={"inf2": "truncate"},
        )
    )

    async def all_down(g: Gateway, reps: list[Replica], a: httpx.AsyncClient) -> str:
        await _faults(a, reps, "inf2", unavailable=True)
        await _faults(a, reps, "g5", unavailable=True)
        await asyncio.sleep(1.0)
        await _clear(a, reps, "g5")
        return "every pool unavailable for 1 s, then g5 back"

    out.append(
        await run_scenario(
            "all pools down, then one back",
            "while no pool is up",
            all_down,
            clear_inf2,
            window=(0.0, 1.6),
        )
    )
    return out


async def _note(text: str) -> str:
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    results = asyncio.run(scenarios())
    print(f"{'scenario':<48} {'requests':>8} {'failed':>6} {'route-around s':>14} recovered")
    for r in results:
        print(
            f"{r.scenario:<48} {r.requests:>8} {r.client_failures:>6} "
            f"{r.route_around_s if r.route_around_s is not None else '-':>14} {r.recovered}"
        )
    if args.out:
        args.out.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
