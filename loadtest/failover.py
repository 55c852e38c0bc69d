"""How fast traffic leaves a faulted pool, and how many requests needed a failover.

    python -m loadtest.failover [--runs 5] [--out results.json]

For each fault kind: a gateway in front of simulated pools on 127.0.0.1
(inf2 x2, g5, g6), a closed-loop load of 8 clients, the fault injected on the
cheap inf2 pool after warm-up, and the pool's own arrival counters watched
until they stop. Prints the median over runs; bounded in time and count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from loadtest.stack import closed_loop, last_increase, start_stack

FAULTS: dict[str, dict[str, Any]] = {
    "unavailable": {"unavailable": True},
    "capacity-errors": {"capacity_error": True},
    "error-rate-0.6": {"error_rate": 0.6},
    "slow-x30": {"latency_multiplier": 30.0},
}
WATCH_S = 4.0


async def one_run(faults: dict[str, Any]) -> dict[str, float]:
    async with start_stack() as stack:
        load = await closed_loop(stack.client, 1.0)
        fault_at = load.results[-1].sent_at if load.results else 0.0
        task = asyncio.create_task(closed_loop(stack.client, WATCH_S + 0.5, load=load))
        await asyncio.sleep(0.3)
        fault_at = max(fault_at, 0.0)
        await stack.fault("inf2", **faults)
        stopped_after = await last_increase(stack, "inf2", WATCH_S)
        await task
    after = [r for r in load.results if r.sent_at >= fault_at]
    return {
        "stopped_after_s": stopped_after,
        "failover_share": sum(1 for r in after if r.attempts > 1) / max(1, len(after)),
        "client_failures": float(len(load.failures)),
        "requests": float(len(load.results)),
    }


async def measure(runs: int) -> dict[str, dict[str, float]]:
    report: dict[str, dict[str, float]] = {}
    for name, faults in FAULTS.items():
        results = [await one_run(faults) for _ in range(runs)]
        report[name] = {
            "median_stopped_after_s": statistics.median(r["stopped_after_s"] for r in results),
            "max_stopped_after_s": max(r["stopped_after_s"] for r in results),
            "median_failover_share": statistics.median(r["failover_share"] for r in results),
            "client_failures": sum(r["client_failures"] for r in results),
            "requests": sum(r["requests"] for r in results),
            "runs": float(runs),
        }
        row = report[name]
        print(
            f"{name:<16} stop median {row['median_stopped_after_s']:.2f} s "
            f"(max {row['max_stopped_after_s']:.2f} s)  failover share "
            f"{row['median_failover_share']:.1%}  client failures "
            f"{int(row['client_failures'])} of {int(row['requests'])}",
            flush=True,
        )
    return report


async def mode_switch_run(hold_s: float = 2.0) -> tuple[float, float, int]:
    """Seconds to capacity mode after inf2 capacity errors, and back to cost after they clear."""
    pools = (
        ("inf2", "inf2", 2, 0.05, 0.7582, ["512x512"]),
        ("g5", "g5-cuda", 2, 0.08, 1.006, None),
    )
    control: dict[str, Any] = {
        "control_interval_s": 0.2,
        "capacity_hold_s": 0.5,
        "capacity_mode_hold_s": hold_s,
        "recovery_hold_s": 0.5,
    }

    async def until(stack: Any, mode: str) -> float:
        started = time.perf_counter()
        while (await stack.client.get("/v1/pools")).json()["effective_mode"] != mode:
            await asyncio.sleep(0.02)
        return time.perf_counter() - started

    async with start_stack(pools, **control) as stack:
        load = await closed_loop(stack.client, 1.0, workers=2)
        task = asyncio.create_task(closed_loop(stack.client, 3.0, workers=2, load=load))
        await stack.fault("inf2", capacity_error=True)
        to_capacity = await asyncio.wait_for(until(stack, "capacity"), 10)
        await task
        for server in stack.backends["inf2"]:
            await stack.admin.delete(server.url + "/admin/faults")
        task = asyncio.create_task(closed_loop(stack.client, hold_s + 3.0, workers=2, load=load))
        to_cost = await asyncio.wait_for(until(stack, "cost"), 20)
        await task
    return to_capacity, to_cost, len(load.failures)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--modes", action="store_true", help="measure mode switching instead")
    args = parser.parse_args(argv)
    if args.modes:
        runs = [asyncio.run(mode_switch_run()) for _ in range(args.runs)]
        up = statistics.median(r[0] for r in runs)
        down = statistics.median(r[1] for r in runs)
        failures = sum(r[2] for r in runs)
        print(
            f"to capacity mode after inf2 capacity errors: median {up:.2f} s; back to cost "
            f"after they clear (hold 2 s): median {down:.2f} s; client failures {failures}"
        )
        return 0 if failures == 0 else 1
    report = asyncio.run(measure(args.runs))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(r["client_failures"] == 0 for r in report.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
