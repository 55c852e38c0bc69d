"""`sd-gateway simulate`: run a scenario for several policies and write the results.

    python -m loadtest.sim --scenario loadtest/scenarios/paper-shortfall.yaml \\
        [--policies auto,least_request] [--seed N] [--out DIR] [--duration S]
        [--demand-scale K] [--max-share POOL=SHARE ...] [--scale-down-window S] [--no-plots]

Every policy sees the same arrivals (drawn once from the seed); each runs on
its own virtual clock, one after another, in this process.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtest.sim.engine import BASELINES, GATEWAY_POLICIES, POLICIES, PolicyRun
from loadtest.sim.oracle import oracle_cost
from loadtest.sim.report import (
    markdown_table,
    targets,
    targets_markdown,
    write_plots,
    write_results,
)
from loadtest.sim.scenario import Scenario, ScenarioError, load_scenario
from loadtest.sim.workload import generate_arrivals

EXIT_SCENARIO = 2
VALID_POLICIES = GATEWAY_POLICIES + BASELINES


def run_simulation(
    scenario: Scenario | str | Path,
    policies: Sequence[str] = POLICIES,
    *,
    seed: int | None = None,
    duration_s: float | None = None,
    out_dir: str | Path | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Run `policies` through `scenario`; returns the results (and writes them to `out_dir`).

    `seed` defaults to the scenario's; `duration_s` shortens the run. The
    result holds, per policy, the summary (`policies`) and time series
    (`series`), the oracle's lower bound (`oracle`), issue 8's targets for
    `auto` (`targets`) and the runtime. Raises ScenarioError for a bad
    scenario file and ValueError for an unknown policy name.
    """
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario)
    unknown = [p for p in policies if p not in VALID_POLICIES]
    if unknown:
        raise ValueError(f"unknown policies {unknown}; valid: {', '.join(VALID_POLICIES)}")
    run_seed = scenario.seed if seed is None else seed
    horizon = scenario.duration_s if duration_s is None else min(duration_s, scenario.duration_s)
    started = time.perf_counter()
    arrivals = generate_arrivals(scenario, run_seed, horizon)
    summaries: dict[str, Any] = {}
    series: dict[str, Any] = {}
    gateway_log = logging.getLogger("gateway")
    level = gateway_log.level
    gateway_log.setLevel(logging.ERROR)  # ejections and mode switches by the thousand
    try:
        for policy in policies:
            t0 = time.perf_counter()
            recorder = PolicyRun(scenario, policy, run_seed, arrivals, horizon).run()
            summaries[policy] = recorder.summary() | {"runtime_s": time.perf_counter() - t0}
            series[policy] = recorder.series()
            summaries[policy]["unserved_log"] = recorder.unserved_log
    finally:
        gateway_log.setLevel(level)
    oracle = oracle_cost(scenario, arrivals, horizon).summary()
    results: dict[str, Any] = {
        "scenario": scenario.name,
        "description": scenario.description,
        "seed": run_seed,
        "duration_s": horizon,
        "arrivals": len(arrivals),
        "slo_interactive_s": scenario.slo.interactive_seconds,
        "slo_batch_s": scenario.slo.batch_seconds,
        "policies": summaries,
        "oracle": oracle,
        "series": series,
    }
    results["targets"] = targets(results)
    results["runtime_s"] = time.perf_counter() - started
    if out_dir is not None:
        out = Path(out_dir)
        write_results(results, out)
        if plots:
            write_plots(results, out)
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sd-gateway simulate",
        description="Compare routing policies on a simulated scenario (virtual time).",
    )
    parser.add_argument("--scenario", required=True, help="scenario YAML file")
    parser.add_argument(
        "--policies",
        default=",".join(POLICIES),
        help=f"comma-separated, from: {', '.join(VALID_POLICIES)} (default: {','.join(POLICIES)})",
    )
    parser.add_argument("--seed", type=int, help="default: the scenario's seed")
    parser.add_argument("--out", help="results directory (default: out/sim/<scenario name>)")
    parser.add_argument("--duration", type=float, help="simulate only this many seconds")
    parser.add_argument(
        "--demand-scale",
        type=float,
        help="sensitivity: multiply arrival rates and replica bounds (not minimums) by this",
    )
    parser.add_argument(
        "--max-share",
        action="append",
        default=[],
        metavar="POOL=SHARE",
        help="sensitivity: the gateway's max_share hedge on a pool (repeatable)",
    )
    parser.add_argument(
        "--scale-down-window",
        type=float,
        metavar="S",
        help="sensitivity: the autoscaler's scale-down window in seconds (every policy)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return parser


def _shares(pairs: Sequence[str]) -> dict[str, float]:
    shares = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            share = float(value)
        except ValueError:
            share = math.nan
        if not sep or not name or not 0.0 < share <= 1.0:
            raise ValueError(f"--max-share {pair!r}: expected POOL=SHARE with SHARE in (0, 1]")
        shares[name] = share
    return shares


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (without the program name), run, print the table; returns an exit code."""
    args = _parser().parse_args(argv)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in VALID_POLICIES]
    if unknown or not policies:
        print(
            f"sd-gateway simulate: unknown policies {unknown}; valid: {', '.join(VALID_POLICIES)}",
            file=sys.stderr,
        )
        return EXIT_SCENARIO
    try:
        scenario = load_scenario(args.scenario)
        if args.demand_scale is not None:
            scenario = scenario.scaled(args.demand_scale)
        if args.max_share:
            scenario = scenario.hedged(_shares(args.max_share))
        if args.scale_down_window is not None:
            scenario = scenario.with_scale_down_window(args.scale_down_window)
    except (ScenarioError, ValueError) as exc:
        print(f"sd-gateway simulate: {exc}", file=sys.stderr)
        return EXIT_SCENARIO
    out = Path(args.out) if args.out else Path("out") / "sim" / scenario.name
    results = run_simulation(
        scenario,
        policies,
        seed=args.seed,
        duration_s=args.duration,
        out_dir=out,
        plots=not args.no_plots,
    )
    print(
        f"{scenario.name}: {results['arrivals']} requests over {results['duration_s']:.0f} s, "
        f"seed {results['seed']}, {len(policies)} policies in {results['runtime_s']:.1f} s"
    )
    print(markdown_table(results))
    print(targets_markdown(results["targets"]))
    print(f"results in {out}/")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
