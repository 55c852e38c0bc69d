"""How the routing decision scales: `Policy.decide` and `PoolRegistry.snapshot()`.

    python -m loadtest.decision_bench [--replicas 1000] [--pools 2,10,100]
                                      [--seconds 0.3] [--out FILE]

For each pool count, `replicas` replicas are spread evenly over the pools
(with varied prices, latencies, shapes and load). Measured, in microseconds:

- `decide`: `Policy.decide` of every named policy over one prebuilt Snapshot,
  with the control loop's weights published (the steady state) and without
  (static weights, the first second);
- `snapshot`: `PoolRegistry.snapshot(priority)` over a registry with the same
  pools, which the router calls once per attempt, with nothing changed since
  the last one, and `after a load change` with one replica's in-flight count
  changed before each (the router's own change per attempt; replicas taken
  in turn);
- `route`: snapshot plus decide, the decision's whole cost per request.
  (`decide` alone reuses one snapshot, whose views keep what they derived
  on first use; `route` pays that on every fresh snapshot.)

Also the overhead benchmark's one pool with one replica, and the demo's
three pools with four replicas, for reference. Each figure is the median of
five timed batches. Prints a table; writes JSON with `--out`.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from backends.clock import MonotonicClock
from gateway.pools import PoolRegistry
from gateway.scheduling.policy import POLICY_NAMES, build_policy
from gateway.scheduling.types import (
    CapacityState,
    PoolView,
    Priority,
    ReplicaView,
    RequestProfile,
    Snapshot,
)
from gateway.settings import settings_from_dict

REQUEST = RequestProfile(width=512, height=512, n=1, priority=Priority.INTERACTIVE, slo_s=2.0)
BATCHES = 5


def layout(pools: int, replicas: int) -> list[tuple[str, int, float, float, bool]]:
    """(name, replicas, price per hour, latency s, 512x512 only) per pool, deterministic."""
    rng = random.Random(pools * 7919 + replicas)
    per_pool, extra = divmod(replicas, pools)
    return [
        (
            f"pool-{i:03d}",
            per_pool + (1 if i < extra else 0),
            round(rng.uniform(0.5, 3.0), 4),
            round(rng.uniform(0.4, 1.5), 3),
            i % 3 == 0,
        )
        for i in range(pools)
    ]


def build_snapshot(pools: int, replicas: int, *, weights: bool) -> Snapshot:
    rng = random.Random(11)
    views = []
    for name, count, price, latency_s, fixed_shape in layout(pools, replicas):
        reps = tuple(
            ReplicaView(
                url=f"http://10.0.{j // 250}.{j % 250}:8000/{name}",
                pool=name,
                healthy=rng.random() > 0.02,
                in_flight=rng.randint(0, 3),
                reported_queue_depth=rng.randint(0, 3),
            )
            for j in range(count)
        )
        views.append(
            PoolView(
                name=name,
                accelerator="bench",
                price_per_hour_usd=price,
                slots_per_replica=1,
                latency_s=latency_s,
                replicas=reps,
                shapes=frozenset({"512x512"}) if fixed_shape else None,
                outstanding=sum(max(r.in_flight, r.reported_queue_depth) for r in reps),
                capacity_state=CapacityState.AVAILABLE,
                weight=(1.0 / pools) if weights else None,
            )
        )
    return Snapshot(pools=tuple(views), arrival_rate_per_s=50.0, target_utilization=0.8)


def build_registry(pools: int, replicas: int) -> PoolRegistry:
    config = [
        {
            "name": name,
            "accelerator": "bench",
            "price_per_hour": price,
            "expected_latency_seconds": latency_s,
            "replicas": [f"http://10.1.{i}.{j % 250}:{8000 + j // 250}" for j in range(count)],
        }
        for i, (name, count, price, latency_s, _) in enumerate(layout(pools, replicas))
    ]
    registry = PoolRegistry(settings_from_dict({"pools": config}), MonotonicClock())
    share = 1.0 / pools
    registry.weights = {p: {name: share for name in registry.pools} for p in Priority}
    return registry


def time_us(fn: Callable[[], object], seconds: float) -> float:
    """Median microseconds per call over `BATCHES` batches of about `seconds` / `BATCHES`."""
    fn()
    start = time.perf_counter()
    calls = 0
    while time.perf_counter() - start < 0.02:
        fn()
        calls += 1
    per_call_s = (time.perf_counter() - start) / calls
    batch = max(1, int(seconds / BATCHES / per_call_s))
    results = []
    for _ in range(BATCHES):
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        results.append((time.perf_counter() - t0) / batch)
    return round(1e6 * statistics.median(results), 2)


def bench_size(label: str, pools: int, replicas: int, seconds: float) -> dict[str, Any]:
    registry = build_registry(pools, replicas)
    snapshot_us = time_us(lambda: registry.snapshot(Priority.INTERACTIVE), seconds)
    states = list(registry.replicas())
    turn = itertools.count()

    def snapshot_after_load_change() -> object:
        replica = states[next(turn) % len(states)]
        replica.in_flight += 1
        snapshot = registry.snapshot(Priority.INTERACTIVE)
        replica.in_flight -= 1
        return snapshot

    row: dict[str, Any] = {
        "label": label,
        "pools": pools,
        "replicas": replicas,
        "snapshot_us": snapshot_us,
        "snapshot_load_change_us": time_us(snapshot_after_load_change, seconds),
        "decide_us": {},
        "decide_static_weights_us": {},
        "route_us": {},
    }
    for weighted, key in ((True, "decide_us"), (False, "decide_static_weights_us")):
        snapshot = build_snapshot(pools, replicas, weights=weighted)
        for name in POLICY_NAMES:
            policy = build_policy(name, random.Random(5))
            if policy.decide(REQUEST, snapshot) is None:
                raise RuntimeError(f"{name} found no pool in the {label} snapshot")
            row[key][name] = time_us(functools.partial(policy.decide, REQUEST, snapshot), seconds)
    for name in POLICY_NAMES:
        policy = build_policy(name, random.Random(5))

        def route(p: Any = policy) -> object:
            return p.decide(REQUEST, registry.snapshot(Priority.INTERACTIVE))

        row["route_us"][name] = time_us(route, seconds)
    return row


def table(rows: Sequence[dict[str, Any]]) -> str:
    head = ["size", "snapshot", "after a change"] + [f"{n}" for n in POLICY_NAMES]
    lines = [
        "decide (weights published) and snapshot, microseconds per call",
        "  ".join(f"{h:>14}" for h in head),
    ]
    for r in rows:
        cells = [r["label"], f"{r['snapshot_us']:.1f}", f"{r['snapshot_load_change_us']:.1f}"]
        cells += [f"{r['decide_us'][n]:.1f}" for n in POLICY_NAMES]
        lines.append("  ".join(f"{c:>14}" for c in cells))
    lines += ["", "decide with static weights (no control-loop weights yet), microseconds"]
    lines.append("  ".join(f"{h:>14}" for h in ["size", *POLICY_NAMES]))
    for r in rows:
        cells = [r["label"]] + [f"{r['decide_static_weights_us'][n]:.1f}" for n in POLICY_NAMES]
        lines.append("  ".join(f"{c:>14}" for c in cells))
    lines += ["", "route = snapshot + decide (weights published), microseconds per request"]
    lines.append("  ".join(f"{h:>14}" for h in ["size", *POLICY_NAMES]))
    for r in rows:
        cells = [r["label"]] + [f"{r['route_us'][n]:.1f}" for n in POLICY_NAMES]
        lines.append("  ".join(f"{c:>14}" for c in cells))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.decision_bench", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--replicas", type=int, default=1000, help="replicas over all pools")
    parser.add_argument("--pools", default="2,10,100", help="comma-separated pool counts")
    parser.add_argument("--seconds", type=float, default=0.3, help="timing per figure")
    parser.add_argument("--out", type=Path, default=None, help="JSON report")
    args = parser.parse_args(argv)
    sizes = [("1p/1r", 1, 1), ("3p/4r (demo)", 3, 4)]
    for text in args.pools.split(","):
        pools = int(text)
        if not 1 <= pools <= args.replicas:
            parser.error(f"pool count {pools} must be between 1 and --replicas")
        sizes.append((f"{pools}p/{args.replicas}r", pools, args.replicas))
    rows = []
    for label, pools, replicas in sizes:
        rows.append(bench_size(label, pools, replicas, args.seconds))
        print(f"measured {label}", file=sys.stderr, flush=True)
    print(table(rows))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"python": sys.version.split()[0], "rows": rows}, indent=2))
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
