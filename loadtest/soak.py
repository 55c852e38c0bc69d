"""Does the gateway leak? A steady-rate soak while its memory and file descriptors are watched.

    python -m loadtest.soak [--duration 600] [--rate 40] [--sample-every 10]
                            [--out FILE] [--rss-growth-mb 8] [--fd-growth 8]

On 127.0.0.1 only: four simulated model servers in this process (two
pools, small latency), the gateway as a subprocess (`sd-gateway serve`,
one worker, its own probes and control loop running as configured), and an
open-loop client at a steady `rate`: interactive and batch, 512x512 and
768x768, and a small share of invalid requests so error paths run too.

Every `sample_every` seconds the gateway process's resident memory and open
file descriptors are read from /proc. The baseline is the first sample
after the warm-up (a tenth of the run, at least one sample interval); the
verdict is `flat` when resident memory grew less than `rss_growth_mb` and
descriptors less than `fd_growth` from the baseline to the last sample,
otherwise `growing`. Bounded: the run stops after `duration` seconds. Prints
the samples and the verdict; writes JSON with `--out`. Linux only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from backends.local import start_backend
from backends.serving import RunningServer
from loadtest.procs import PYTHON, free_port, open_fds, rss_bytes, run_loop, spawned

# (pool, profile, replicas, shapes)
POOLS: tuple[tuple[str, str, int, list[str] | None], ...] = (
    ("inf2", "inf2", 2, ["512x512"]),
    ("g6", "g6", 2, None),
)
BACKEND_LATENCY_S = 0.02
MAX_IN_FLIGHT = 256  # the client never holds more; beyond it a send counts as dropped
PROMPTS = (
    "a lighthouse on a cliff at dusk, oil painting",
    "a red fox in fresh snow, telephoto, morning light",
    "isometric city block at night, neon, rain",
    "a bowl of ramen, studio photo, shallow depth of field",
)


@dataclass
class Sample:
    t_s: float
    rss_mb: float
    fds: int
    requests: int
    errors: int


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    dropped: int = 0
    in_flight: int = 0

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def errors(self) -> int:
        """Transport failures and 5xx; 4xx to the deliberately invalid requests do not count."""
        return sum(n for s, n in self.statuses.items() if s == 0 or s >= 500) + self.dropped


@contextlib.asynccontextmanager
async def start_backends() -> AsyncIterator[dict[str, list[RunningServer]]]:
    async with contextlib.AsyncExitStack() as stack:
        servers: dict[str, list[RunningServer]] = {}
        for i, (pool, profile, count, _) in enumerate(POOLS):
            for j in range(count):
                server = await stack.enter_async_context(
                    start_backend(
                        profile=profile,
                        latency_s=BACKEND_LATENCY_S,
                        slots=2,
                        max_queue=64,
                        seed=10 * i + j,
                    )
                )
                servers.setdefault(pool, []).append(server)
        yield servers


def gateway_config(backends: dict[str, list[RunningServer]], port: int) -> dict[str, Any]:
    pools = []
    for pool, profile, _, shapes in POOLS:
        entry: dict[str, Any] = {
            "name": pool,
            "accelerator": profile,
            "price_per_hour": 0.7582 if pool == "inf2" else 0.8048,
            "slots_per_replica": 2,
            "expected_latency_seconds": BACKEND_LATENCY_S,
            "replicas": [s.url for s in backends[pool]],
        }
        if shapes is not None:
            entry["shapes"] = shapes
        pools.append(entry)
    return {"host": "127.0.0.1", "port": port, "seed": 1, "pools": pools}


def request_for(rng: random.Random) -> tuple[dict[str, Any], dict[str, str]]:
    """A body and headers: mostly valid, a few invalid on purpose."""
    if rng.random() < 0.02:
        return {"prompt": "", "width": 7}, {}
    side = 768 if rng.random() < 0.25 else 512
    priority = "batch" if rng.random() < 0.2 else "interactive"
    body = {"prompt": rng.choice(PROMPTS), "width": side, "height": side, "steps": 10}
    return body, {"X-Priority": priority}


async def drive(
    client: httpx.AsyncClient, rate_per_s: float, duration_s: float, tally: Tally
) -> None:
    """Open loop: one request every 1/rate seconds, whatever the answers do."""
    rng = random.Random(3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    tasks: set[asyncio.Task[None]] = set()

    async def one(body: dict[str, Any], headers: dict[str, str]) -> None:
        tally.in_flight += 1
        try:
            r = await client.post("/v1/images", json=body, headers=headers)
            tally.statuses[r.status_code] += 1
        except httpx.HTTPError:
            tally.statuses[0] += 1
        finally:
            tally.in_flight -= 1

    i = 0
    while (due := started + i / rate_per_s) < started + duration_s:
        await asyncio.sleep(max(0.0, due - loop.time()))
        i += 1
        if tally.in_flight >= MAX_IN_FLIGHT:
            tally.dropped += 1
            continue
        task = asyncio.create_task(one(*request_for(rng)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=30.0)


async def sample_every(
    pid: int, every_s: float, duration_s: float, tally: Tally, samples: list[Sample]
) -> None:
    started = time.monotonic()
    while True:
        t = time.monotonic() - started
        samples.append(
            Sample(
                round(t, 1),
                round(rss_bytes(pid) / 2**20, 2),
                open_fds(pid),
                tally.requests,
                tally.errors,
            )
        )
        print(
            f"t={t:6.1f}s  rss {samples[-1].rss_mb:7.2f} MB  fds {samples[-1].fds:4d}  "
            f"requests {tally.requests}  errors {tally.errors}",
            flush=True,
        )
        if t >= duration_s:
            return
        await asyncio.sleep(min(every_s, max(0.0, duration_s - t)))


def verdict(
    samples: Sequence[Sample], warmup_s: float, rss_growth_mb: float, fd_growth: int
) -> dict[str, Any]:
    after = [s for s in samples if s.t_s >= warmup_s] or list(samples)
    start, end = after[0], after[-1]
    span_min = (end.t_s - start.t_s) / 60.0
    rss_delta = round(end.rss_mb - start.rss_mb, 2)
    fd_delta = end.fds - start.fds
    flat = rss_delta < rss_growth_mb and fd_delta < fd_growth
    return {
        "verdict": "flat" if flat else "growing",
        "baseline_at_s": start.t_s,
        "rss_start_mb": start.rss_mb,
        "rss_end_mb": end.rss_mb,
        "rss_max_mb": max(s.rss_mb for s in after),
        "rss_growth_mb": rss_delta,
        "rss_mb_per_min": round(rss_delta / span_min, 3) if span_min > 0 else None,
        "fds_start": start.fds,
        "fds_end": end.fds,
        "fds_max": max(s.fds for s in after),
        "fd_growth": fd_delta,
        "thresholds": {"rss_growth_mb": rss_growth_mb, "fd_growth": fd_growth},
    }


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    tally = Tally()
    samples: list[Sample] = []
    warmup_s = max(args.sample_every, args.duration / 10)
    async with start_backends() as backends:
        with tempfile.TemporaryDirectory(prefix="sd-soak-") as tmp:
            port = free_port()
            config = Path(tmp) / "gateway.yaml"
            config.write_text(yaml.safe_dump(gateway_config(backends, port)))
            cmd = [PYTHON, "-m", "gateway", "serve", "--config", str(config)]
            cmd += ["--log-level", "warning"]
            # The gateway runs in its own process; this loop keeps serving the backends,
            # so wait for it without blocking (spawned() itself waits synchronously).
            with spawned(cmd, log_path=Path(tmp) / "gateway.log") as gw:
                url = f"http://127.0.0.1:{port}"
                limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
                async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits) as client:
                    await wait_ready(client, gw.poll, 30.0)
                    sampler = asyncio.create_task(
                        sample_every(gw.pid, args.sample_every, args.duration, tally, samples)
                    )
                    await drive(client, args.rate, args.duration, tally)
                    await sampler
    result = verdict(samples, warmup_s, args.rss_growth_mb, args.fd_growth)
    return {
        "command": "python -m loadtest.soak " + " ".join(args.argv),
        "settings": {
            "duration_s": args.duration,
            "rate_per_s": args.rate,
            "sample_every_s": args.sample_every,
            "warmup_s": warmup_s,
            "backend_latency_s": BACKEND_LATENCY_S,
        },
        "requests": tally.requests,
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "errors": tally.errors,
        "dropped": tally.dropped,
        "samples": [s.__dict__ for s in samples],
        **result,
    }


async def wait_ready(client: httpx.AsyncClient, poll: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if poll() is not None:
            raise RuntimeError("the gateway exited during start-up")
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get("/readyz")).status_code == 200:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the gateway was not ready within {timeout_s:g} s")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m loadtest.soak", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds")
    parser.add_argument("--rss-growth-mb", type=float, default=8.0)
    parser.add_argument("--fd-growth", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="JSON report")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.rate <= 0 or args.sample_every <= 0:
        parser.error("--duration, --rate and --sample-every must be positive")
    args.argv = argv
    report = run_loop(soak(args))
    print(
        f"\n== soak {report['settings']['duration_s']:g} s at {args.rate:g}/s: "
        f"{report['requests']} requests, {report['errors']} errors, {report['dropped']} dropped"
    )
    print(
        f"rss {report['rss_start_mb']:.2f} -> {report['rss_end_mb']:.2f} MB "
        f"({report['rss_growth_mb']:+.2f} MB, max {report['rss_max_mb']:.2f}) from "
        f"t={report['baseline_at_s']:g}s; fds {report['fds_start']} -> {report['fds_end']} "
        f"(max {report['fds_max']})"
    )
    print(f"verdict: {report['verdict']}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0 if report["verdict"] == "flat" else 1


if __name__ == "__main__":
    sys.exit(main())
