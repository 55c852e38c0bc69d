"""Results of a simulation: `results.json`, a Markdown table, the targets, and PNG plots.

Plots need matplotlib (the `sim` extra); without it `write_plots` returns no
files and says so, and everything else still works.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Targets of issue 8, for `auto` against the others.
COST_BELOW_SPREADERS = 0.20  # at least 20 % below latency_ewma and least_request
COST_BELOW_ALB = 0.10  # at least 10 % below static_alb
COST_ABOVE_ORACLE = 0.15  # within 15 % of the oracle
PLOT_BUCKET_S = 60.0  # plots aggregate the 10 s series to a minute


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.2f} %"


def _sec(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _leave(summary: Mapping[str, Any]) -> str:
    faults = summary.get("faults") or []
    if not faults:
        return "no fault"
    needed = [f for f in faults if f.get("traffic_had_to_leave")]
    if not needed:
        return "not needed"
    if summary.get("traffic_never_left"):
        return f"never ({summary['traffic_never_left']} of {len(needed)})"
    worst = summary.get("traffic_left_after_s_max") or 0.0
    text = "< 1 s" if worst < 1.0 else f"{worst:.0f} s"
    return text if len(needed) == len(faults) else f"{text} ({len(needed)} of {len(faults)})"


def markdown_table(results: Mapping[str, Any]) -> str:
    """One row per policy, then the oracle."""
    oracle = results.get("oracle") or {}
    oracle_per_1k = oracle.get("usd_per_1k_images")
    head = (
        "| policy | images served | failed (interactive / batch) | shed | "
        "interactive SLO | batch SLO | p50 s | p95 s | p99 s | cost $ | $/1k images | "
        "vs oracle | fault to traffic leaving |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    )
    rows = [head]
    for name, s in results["policies"].items():
        i, b = s["interactive"], s["batch"]
        per_1k = s["usd_per_1k_images"]
        versus = (
            f"{100.0 * (per_1k / oracle_per_1k - 1.0):+.0f} %" if per_1k and oracle_per_1k else "-"
        )
        rows.append(
            f"| {name} | {s['images_served']} | {i['failed']} / {b['failed']} | "
            f"{i['shed'] + b['shed']} | {_pct(i['slo_attainment'])} | "
            f"{_pct(b['slo_attainment'])} | {_sec(i['p50_s'])} | {_sec(i['p95_s'])} | "
            f"{_sec(i['p99_s'])} | {s['cost_usd']:.2f} | "
            f"{per_1k:.3f} | {versus} | {_leave(s)} |"
            if per_1k is not None
            else f"| {name} | 0 | - | - | - | - | - | - | - | {s['cost_usd']:.2f} | - | - | - |"
        )
    if oracle:
        rows.append(_oracle_row("oracle (lower bound)", oracle, oracle))
        for key, label in _ORACLE_VARIANTS:
            if key in oracle:
                rows.append(_oracle_row(label, oracle[key], oracle))
    return "\n".join(rows) + "\n"


# The oracle's other figures (loadtest/sim/oracle.py), as rows below it.
_ORACLE_VARIANTS = (
    ("whole_replicas", "oracle in whole replicas (lower bound)"),
    (
        "held_through_scaler",
        "oracle in whole replicas, held as the scaler holds them (not a bound)",
    ),
)


def _oracle_row(label: str, figures: Mapping[str, Any], oracle: Mapping[str, Any]) -> str:
    """A row of the oracle's `figures`: the oracle itself, or one of its variants."""
    per_1k, base = figures.get("usd_per_1k_images"), oracle.get("usd_per_1k_images")
    versus = f"{100.0 * (per_1k / base - 1.0):+.0f} %" if per_1k and base else "-"
    shed = "-"
    if figures is oracle:
        versus, shed = "0 %", f"{oracle['unservable_requests']} unservable"
    per_1k_text = f"{per_1k:.3f}" if per_1k is not None else "-"
    return (
        f"| {label} | {oracle['images_served']} | - | {shed} | - | - | - | - | - | "
        f"{figures['cost_usd']:.2f} | {per_1k_text} | {versus} | - |"
    )


def targets(results: Mapping[str, Any], ours: str = "auto") -> list[dict[str, Any]]:
    """Issue 8's targets for `ours`, each met (True/False) or not measurable (None)."""
    policies = results["policies"]
    if ours not in policies:
        return []
    mine = policies[ours]
    out: list[dict[str, Any]] = []

    def add(name: str, met: bool | None, detail: str) -> None:
        out.append({"target": name, "met": met, "detail": detail})

    failed_ok = mine["interactive"]["failed_while_capacity_sufficed"]
    add(
        "zero failed interactive requests wherever total capacity suffices",
        failed_ok == 0,
        f"{failed_ok} failed while capacity sufficed "
        f"({mine['interactive']['failed']} failed in all)",
    )
    slo = mine["interactive"]["slo_attainment"]
    for other in ("latency_ewma", "least_request"):
        theirs = policies.get(other)
        if theirs is None:
            add(f"interactive SLO attainment >= {other}", None, "not run")
            continue
        value = theirs["interactive"]["slo_attainment"]
        add(
            f"interactive SLO attainment >= {other}",
            slo is not None and value is not None and slo >= value,
            f"{_pct(slo)} vs {_pct(value)}",
        )
    cost = mine["usd_per_1k_images"]
    bounds: list[tuple[str, float | None, float, str]] = [
        (other, policies.get(other, {}).get("usd_per_1k_images"), COST_BELOW_SPREADERS, "below")
        for other in ("latency_ewma", "least_request")
    ]
    bounds.append(
        (
            "static_alb",
            policies.get("static_alb", {}).get("usd_per_1k_images"),
            COST_BELOW_ALB,
            "below",
        )
    )
    for other, theirs_cost, share, _ in bounds:
        name = f"$/1k images at least {share:.0%} below {other}"
        if theirs_cost is None or cost is None:
            add(name, None, "not run")
            continue
        saving = 1.0 - cost / theirs_cost
        add(name, saving >= share, f"{cost:.3f} vs {theirs_cost:.3f}: {saving:+.1%} saving")
    oracle = results.get("oracle") or {}
    oracle_cost = oracle.get("usd_per_1k_images")
    name = f"$/1k images within {COST_ABOVE_ORACLE:.0%} of the oracle"
    if oracle_cost is None or cost is None:
        add(name, None, "not run")
    else:
        above = cost / oracle_cost - 1.0
        whole = (oracle.get("whole_replicas") or {}).get("usd_per_1k_images")
        also = f" ({cost / whole - 1.0:+.1%} on the oracle in whole replicas)" if whole else ""
        add(
            name,
            above <= COST_ABOVE_ORACLE,
            f"{cost:.3f} vs {oracle_cost:.3f}: {above:+.1%}{also}",
        )
    return out


def targets_markdown(checks: Sequence[Mapping[str, Any]]) -> str:
    if not checks:
        return ""
    lines = ["| target (auto) | met | measured |", "| --- | --- | --- |"]
    mark = {True: "yes", False: "**no**", None: "-"}
    for c in checks:
        lines.append(f"| {c['target']} | {mark[c['met']]} | {c['detail']} |")
    return "\n".join(lines) + "\n"


def write_results(results: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Write results.json and results.md under `out_dir`; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(results, indent=1, default=_json_default) + "\n")
    md_path = out_dir / "results.md"
    md = (
        f"# Simulation: {results['scenario']}\n\n{results.get('description', '')}\n\n"
        f"Seed {results['seed']}, {results['duration_s']:.0f} s simulated, "
        f"{results['arrivals']} requests, {results['runtime_s']:.1f} s to run.\n\n"
        + markdown_table(results)
        + "\n"
        + targets_markdown(results.get("targets", []))
    )
    md_path.write_text(md)
    return [json_path, md_path]


def _json_default(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"cannot serialise {type(value).__name__}")


# --- plots ---------------------------------------------------------------------------------


def _coarse(values: Sequence[float | None], factor: int, *, mean: bool) -> list[float]:
    out = []
    for i in range(0, len(values), factor):
        chunk = [v for v in values[i : i + factor] if v is not None]
        if not chunk:
            out.append(math.nan)
        else:
            out.append(sum(chunk) / len(chunk) if mean else sum(chunk))
    return out


def _worst(values: Sequence[float | None]) -> float:
    present = [v for v in values if v is not None]
    return max(present) if present else math.nan


def write_plots(results: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Traffic share, replicas, interactive p95 latency and cumulative cost, as PNGs."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter, ScalarFormatter
    except ImportError:  # pragma: no cover - depends on the environment
        print("matplotlib is not installed: no plots (pip install -e '.[sim]')")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    series: Mapping[str, Any] = results["series"]
    policies = list(series)
    if not policies:
        return []
    name = results["scenario"]
    first = series[policies[0]]
    bucket_s = float(first["bucket_s"])
    factor = max(1, round(PLOT_BUCKET_S / bucket_s))
    pools = list(first["served"])
    colours = {p: plt.get_cmap("tab10")(i % 10) for i, p in enumerate(pools)}
    paths: list[Path] = []

    def grid(title: str) -> tuple[Any, list[Any]]:
        cols = 2
        rows = math.ceil(len(policies) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(11, 2.3 * rows), sharex=True, squeeze=False)
        flat = [ax for row in axes for ax in row]
        for ax in flat[len(policies) :]:
            ax.set_visible(False)
        fig.suptitle(f"{name}: {title}")
        fig.supxlabel("minutes", fontsize=9)
        return fig, flat

    def minutes(n: int) -> list[float]:
        return [i * bucket_s * factor / 60.0 for i in range(n)]

    fig, axes = grid("traffic share per pool (images served, per minute)")
    for ax, policy in zip(axes, policies, strict=False):
        served = {p: _coarse(series[policy]["served"][p], factor, mean=False) for p in pools}
        n = len(next(iter(served.values())))
        totals = [sum(served[p][i] for p in pools) or math.nan for i in range(n)]
        shares = [[served[p][i] / totals[i] for i in range(n)] for p in pools]
        ax.stackplot(minutes(n), shares, colors=[colours[p] for p in pools], labels=pools)
        ax.set_ylim(0, 1)
        ax.set_title(policy, fontsize=9)
    axes[0].legend(loc="upper left", fontsize=7, ncol=len(pools))
    paths.append(_save(fig, out_dir / "traffic_share.png", plt))

    fig, axes = grid("replicas per pool (billed, minute mean)")
    for ax, policy in zip(axes, policies, strict=False):
        reps = [_coarse(series[policy]["replicas"][p], factor, mean=True) for p in pools]
        ax.stackplot(minutes(len(reps[0])), reps, colors=[colours[p] for p in pools], labels=pools)
        ax.set_title(policy, fontsize=9)
    axes[0].legend(loc="upper left", fontsize=7, ncol=len(pools))
    paths.append(_save(fig, out_dir / "replicas.png", plt))

    fig, ax = plt.subplots(figsize=(11, 4))
    for policy in policies:
        p95 = series[policy]["interactive_p95_s"]
        values = [
            max(v for v in p95[i : i + factor] if v is not None)
            if any(v is not None for v in p95[i : i + factor])
            else math.nan
            for i in range(0, len(p95), factor)
        ]
        ax.plot(minutes(len(values)), values, label=policy, linewidth=1.2)
    slo = results.get("slo_interactive_s")
    if slo:
        ax.axhline(slo, color="black", linestyle="--", linewidth=0.8, label="interactive SLO")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks([0.5, 1, 2, 5, 10, 20, 50])
    ax.set_xlabel("minutes")
    ax.set_ylabel("p95 latency, s (worst 10 s in each minute)")
    ax.set_title(f"{name}: interactive p95 latency")
    ax.legend(fontsize=7, ncol=4)
    paths.append(_save(fig, out_dir / "latency.png", plt))

    fig, ax = plt.subplots(figsize=(11, 4))
    for policy in policies:
        cost = series[policy]["cost_usd"]
        ax.plot([i * bucket_s / 60.0 for i in range(len(cost))], cost, label=policy, linewidth=1.2)
    oracle = (results.get("oracle") or {}).get("cumulative_cost_usd") or []
    if oracle:
        ax.plot(
            [t / 60.0 for t, _ in oracle],
            [c for _, c in oracle],
            label="oracle",
            color="black",
            linestyle="--",
        )
    ax.set_xlabel("minutes")
    ax.set_ylabel("USD")
    ax.set_title(f"{name}: cumulative cost")
    ax.legend(fontsize=7, ncol=4)
    paths.append(_save(fig, out_dir / "cost.png", plt))
    return paths


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
