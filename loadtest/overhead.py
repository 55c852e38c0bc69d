"""What the gateway costs: the same load direct, through the gateway, nginx and a naive proxy.

    python -m loadtest.overhead [--duration S] [--concurrency N] [--out FILE]
                                [--workers N] [--targets a,b] [--payloads small,large]
                                [--paced-rate R] [--profile DIR]

Everything runs on 127.0.0.1, each part in its own process (group), stopped
on exit: a fake backend answering at once (`loadtest.fakebackend`: a small
JSON answer, or 1.5 MB, the size of a base64 512x512 PNG), then for each
payload and target a fresh proxy and one closed-loop load generator
(`loadtest.loadgen`, `concurrency` keep-alive connections):

- `direct`: no proxy; the load generator's and backend's ceiling;
- `gateway`: `sd-gateway serve` exactly as deployed (its own choice of event
  loop and HTTP protocol), one worker, one pool with the fake backend as its
  only replica, probes slowed down;
- `gateway-xN`: the same with `--workers N` (N > 1 only);
- `nginx`: a plain reverse proxy, one worker, upstream keep-alive, no
  buffering (skipped with a reason when `nginx` is not on PATH);
- `naive`: `loadtest.naive_proxy`, FastAPI with an httpx client per request.

Each row: requests/s, p50/p99 latency, the latency added over `direct`, the
throughput ratio to `direct`, and the proxy's CPU time per request. With
`--paced-rate`, a second pass per target sends the small payload at that
fixed rate, where latency is the proxy's own cost rather than queueing.
`--profile DIR` adds a run of the gateway under py-spy (flame graph, collapsed
stacks, and a summary of where the time goes). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from loadtest.procs import (
    PYTHON,
    cpu_seconds,
    descendants,
    free_port,
    spawned,
    stop,
    wait_for_port,
)

PAYLOADS = ("small", "large")
TARGETS = ("direct", "gateway", "nginx", "naive")
# Targets of issue 10, for one gateway worker at concurrency 16.
TARGET_ADDED_P50_MS = 1.0
TARGET_ADDED_P99_MS = 5.0
TARGET_SMALL_RPS = 3000.0
TARGET_LARGE_RPS = 200.0
TARGET_NAIVE_RATIO = 10.0


@dataclass
class Target:
    """A running proxy (or none): where the load generator sends, and whose CPU to count."""

    name: str
    url: str
    pid: int | None  # process whose tree is the proxy; None for direct
    skipped: str | None = None


# -- the parts ---------------------------------------------------------------------------


@contextlib.contextmanager
def fake_backend(workdir: Path) -> Iterator[dict[str, str]]:
    """The fast backend on two ports; yields {payload: base URL}."""
    small, large = free_port(), free_port()
    args = [PYTHON, "-m", "loadtest.fakebackend", "--small-port", str(small)]
    with spawned(
        [*args, "--large-port", str(large)], port=small, log_path=workdir / "backend.log"
    ) as proc:
        wait_for_port(large, 10.0, proc)
        yield {
            "small": f"http://127.0.0.1:{small}",
            "large": f"http://127.0.0.1:{large}",
            "pid": str(proc.pid),
        }


def gateway_config(upstream: str, port: int) -> dict[str, Any]:
    """One pool, one replica; probes rare so they do not compete with the load."""
    return {
        "host": "127.0.0.1",
        "port": port,
        "probe_interval_s": 60.0,
        "probe_timeout_s": 5.0,
        "pools": [
            {
                "name": "fake",
                "accelerator": "none",
                "price_per_hour": 1.0,
                "slots_per_replica": 64,
                "expected_latency_seconds": 0.001,
                "replicas": [upstream],
            }
        ],
    }


def _wait_ready(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return
        time.sleep(0.1)
    raise RuntimeError(f"{url} was not ready within {timeout_s:g} s")


@contextlib.contextmanager
def start_target(name: str, upstream: str, workdir: Path) -> Iterator[Target]:
    """Start the proxy `name` in front of `upstream`; stop it on exit."""
    if name == "direct":
        yield Target(name, upstream, None)
        return
    port = free_port()
    log = workdir / f"{name}.log"
    if name.startswith("gateway"):
        workers = int(name.partition("-x")[2] or 1)
        config = workdir / f"{name}.yaml"
        config.write_text(yaml.safe_dump(gateway_config(upstream, port)))
        args = [PYTHON, "-m", "gateway", "serve", "--config", str(config)]
        args += ["--workers", str(workers), "--log-level", "warning"]
        with spawned(args, port=port, log_path=log) as proc:
            # With several workers, each must have started: ask a few times.
            for _ in range(max(1, 2 * workers)):
                _wait_ready(f"http://127.0.0.1:{port}/readyz", 20.0)
            if workers > 1:
                time.sleep(1.0)
            yield Target(name, f"http://127.0.0.1:{port}", proc.pid)
    elif name == "nginx":
        nginx = shutil.which("nginx")
        if nginx is None:
            yield Target(name, "", None, skipped="nginx is not on PATH")
            return
        conf = write_nginx_conf(workdir, upstream, port)
        args = [nginx, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "nginx.err")]
        with spawned(args, port=port, log_path=log) as proc:
            yield Target(name, f"http://127.0.0.1:{port}", proc.pid)
    elif name == "naive":
        args = [PYTHON, "-m", "loadtest.naive_proxy", "--upstream", upstream]
        with spawned([*args, "--port", str(port)], port=port, log_path=log) as proc:
            yield Target(name, f"http://127.0.0.1:{port}", proc.pid)
    else:
        raise ValueError(f"unknown target {name!r}")


def write_nginx_conf(workdir: Path, upstream: str, port: int) -> Path:
    """A plain reverse proxy: one worker, upstream keep-alive, responses streamed."""
    tmp = workdir / "nginx-tmp"
    tmp.mkdir(exist_ok=True)
    # As root, nginx's workers would switch to `nobody`, who cannot use our private temp dir.
    user = "user root;\n" if os.geteuid() == 0 else ""
    server = upstream.removeprefix("http://")
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""{user}worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    upstream backend {{
        server {server};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""
    )
    return conf


# -- one measurement ---------------------------------------------------------------------


def run_load(
    url: str,
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    rate_per_s: float | None = None,
    cpu_pids: Sequence[int] = (),
) -> dict[str, Any]:
    """Run `loadtest.loadgen` in its own process; adds the CPU time `cpu_pids` spent."""
    args = [PYTHON, "-m", "loadtest.loadgen", "--url", url + "/v1/images"]
    args += ["--concurrency", str(concurrency), "--duration", str(duration_s)]
    args += ["--warmup", str(warmup_s)]
    if rate_per_s is not None:
        args += ["--rate", str(rate_per_s)]
    cpu_before = cpu_seconds(cpu_pids)
    per_pid_before = {pid: cpu_seconds([pid]) for pid in cpu_pids}
    timeout_s = warmup_s + duration_s + 60.0
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    finally:
        stop(proc)
    cpu_s = cpu_seconds(cpu_pids) - cpu_before
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}): {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    if cpu_pids and result["all_requests"]:
        result["proxy_cpu_us_per_request"] = round(1e6 * cpu_s / result["all_requests"], 1)
    if len(cpu_pids) > 1 and cpu_s > 0:
        # How evenly the work spread over the proxy's processes (workers share one socket).
        shares = [(cpu_seconds([pid]) - before) / cpu_s for pid, before in per_pid_before.items()]
        result["proxy_cpu_share_by_process"] = sorted((round(x, 3) for x in shares), reverse=True)
    return result


# -- comparison ----------------------------------------------------------------------------


def compare(rows: list[dict[str, Any]]) -> None:
    """Add latency over direct and throughput ratios to each row, in place."""
    direct = {(r["payload"], r["mode"]): r for r in rows if r["target"] == "direct"}
    for row in rows:
        base = direct.get((row["payload"], row["mode"]))
        if base is None or row.get("skipped") or row["target"] == "direct":
            continue
        row["added_p50_ms"] = round(row["p50_ms"] - base["p50_ms"], 3)
        row["added_p99_ms"] = round(row["p99_ms"] - base["p99_ms"], 3)
        if base["requests_per_s"]:
            row["ratio_vs_direct"] = round(row["requests_per_s"] / base["requests_per_s"], 3)


def ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Our throughput against nginx's and the naive proxy's, per payload (closed loop)."""
    out: dict[str, dict[str, float | None]] = {}
    for payload in PAYLOADS:
        by = {
            r["target"]: r
            for r in rows
            if r["payload"] == payload and r["mode"] == "closed" and not r.get("skipped")
        }
        ours = by.get("gateway")
        if ours is None:
            continue
        out[payload] = {
            f"gateway_vs_{other}": (
                round(ours["requests_per_s"] / by[other]["requests_per_s"], 2)
                if other in by and by[other]["requests_per_s"]
                else None
            )
            for other in ("nginx", "naive", "direct")
        }
    return out


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 10's targets against this run's one-worker gateway rows."""

    def row(payload: str, mode: str = "closed") -> dict[str, Any] | None:
        for r in rows:
            if (r["payload"], r["mode"], r["target"]) == (payload, mode, "gateway"):
                return r
        return None

    checks: list[dict[str, Any]] = []

    def check(name: str, value: float | None, limit: float, at_most: bool) -> None:
        met = None if value is None else (value <= limit if at_most else value >= limit)
        checks.append({"target": name, "value": value, "limit": limit, "met": met})

    small, large = row("small"), row("large")
    if small is not None:
        check("added p50 ms, small, c=16 closed loop", small.get("added_p50_ms"), 1.0, True)
        check("added p99 ms, small, c=16 closed loop", small.get("added_p99_ms"), 5.0, True)
        check("small requests/s", small["requests_per_s"], TARGET_SMALL_RPS, False)
    paced = row("small", "paced")
    if paced is not None:
        rate = paced["target_rate_per_s"]
        check(f"added p50 ms, small, paced {rate:g}/s", paced.get("added_p50_ms"), 1.0, True)
        check(f"added p99 ms, small, paced {rate:g}/s", paced.get("added_p99_ms"), 5.0, True)
    if large is not None:
        check("large responses/s", large["requests_per_s"], TARGET_LARGE_RPS, False)
    for payload, r in ratios(rows).items():
        check(f"x naive throughput, {payload}", r["gateway_vs_naive"], TARGET_NAIVE_RATIO, False)
    return checks


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    header = (
        "payload", "mode", "target", "req/s", "p50 ms", "p99 ms", "+p50 ms", "+p99 ms",
        "x direct", "cpu us/req", "errors",
    )  # fmt: skip
    lines: list[tuple[str, ...]] = [header]
    for r in rows:
        if r.get("skipped"):
            lines.append((r["payload"], r["mode"], r["target"], f"skipped: {r['skipped']}"))
            continue
        lines.append(
            (
                r["payload"],
                r["mode"] if r["mode"] == "closed" else f"{r['target_rate_per_s']:g}/s",
                r["target"],
                _fmt(r["requests_per_s"], 0),
                _fmt(r["p50_ms"]),
                _fmt(r["p99_ms"]),
                _fmt(r.get("added_p50_ms")),
                _fmt(r.get("added_p99_ms")),
                _fmt(r.get("ratio_vs_direct")),
                _fmt(r.get("proxy_cpu_us_per_request"), 0),
                str(r["errors"]),
            )
        )
    full = [line for line in lines if len(line) == len(header)]
    widths = [max(len(line[i]) for line in (lines if i < 3 else full)) for i in range(len(header))]
    out = []
    for line in lines:
        if len(line) < len(header):
            out.append(
                "  ".join(c.ljust(widths[i]) for i, c in enumerate(line[:3])) + "  " + line[3]
            )
        else:
            out.append(
                "  ".join(
                    c.rjust(w) if i > 2 else c.ljust(w)
                    for i, (c, w) in enumerate(zip(line, widths, strict=True))
                )
            )
    return "\n".join(out)


# -- profile -------------------------------------------------------------------------------

PROFILE_RATE_HZ = 200
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _frame_key(frame: str) -> str:
    m = FRAME.match(frame)
    if m is None:
        return frame
    path = m.group("file")
    for marker in ("site-packages/", "lib/python3", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m.group('func')} ({path})"


def _package(frame: str) -> str:
    m = FRAME.match(frame)
    path = m.group("file") if m else frame
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    for pkg in ("gateway", "backends", "loadtest"):
        if f"/{pkg}/" in path or path.startswith(f"{pkg}/"):
            return pkg
    if "python3" in path or path.startswith("<"):
        return "stdlib"
    return "native" if m is None else path


# Where a gateway request's CPU goes: share of busy samples whose stack holds a matching frame.
BREAKDOWN: tuple[tuple[str, str], ...] = (
    ("uvicorn: ASGI task (run_asgi), all app work", r"RequestResponseCycle\.run_asgi"),
    ("uvicorn: HTTP parsing (data_received)", r"HttpToolsProtocol\.data_received"),
    ("FastAPI/Starlette stack, endpoint included", r"^FastAPI\.__call__"),
    ("FastAPI native telemetry check", r"NativeTelemetry\.enabled|telemetry/_api"),
    ("endpoint: generate() in gateway/api.py", r"generate \(gateway/api"),
    ("  request body read and validation", r"read_body|parse_body"),
    ("  request id", r"^uuid4|request_id_of|^RequestIds\."),
    ("  Router.route", r"^Router\.route \(gateway"),
    ("    PoolRegistry.snapshot", r"PoolRegistry\.snapshot"),
    ("    Policy.decide", r"Policy\.decide"),
    ("    upstream POST (AiohttpTransport.post)", r"AiohttpTransport\.post"),
    ("    asyncio timeouts (the router's and aiohttp's)", r"^timeout \(asyncio|^Timeout\."),
    ("  prometheus_client", r"prometheus_client"),
    ("response streaming (ProxiedResponse.__call__)", r"ProxiedResponse\.__call__"),
    ("  socket writes to the client (RequestResponseCycle.send)", r"RequestResponseCycle\.send"),
    (
        "gateway protocol: header size and time limits",
        r"^LimitedHttpToolsProtocol\.|^_HeaderDeadlines\.",
    ),
    ("background: control loop, probes, discovery", r"ControlLoop|HealthTracker|Discovery"),
)


def summarize_profile(
    collapsed: Path, top: int = 25, rate_hz: float | None = None, seconds: float | None = None
) -> dict[str, Any]:
    """Shares of busy samples from py-spy's raw (collapsed) output.

    Inclusive and self shares per function, self share per package, and the
    `BREAKDOWN` of a request. With `rate_hz` and `seconds`, also the busy share
    of the sampled time (py-spy records only samples where the thread was not idle).
    """
    total = 0
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    stacks: list[tuple[set[str], int]] = []
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [
            f for f in stack.split(";") if not f.startswith(("process ", "thread ")) and f.strip()
        ]
        if not frames:
            continue
        total += count
        keys = {_frame_key(f) for f in frames}
        stacks.append((keys, count))
        for key in keys:
            inclusive[key] += count
        own[_frame_key(frames[-1])] += count
        packages[_package(frames[-1])] += count

    def shares(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in counter.most_common(top)]

    breakdown = []
    for label, pattern in BREAKDOWN:
        regex = re.compile(pattern)
        hits = sum(n for keys, n in stacks if any(regex.search(k) for k in keys))
        breakdown.append((label, round(100 * hits / total, 1) if total else 0.0))
    parts = dict(breakdown)
    in_stack = parts["FastAPI/Starlette stack, endpoint included"]
    overhead = in_stack - parts["endpoint: generate() in gateway/api.py"]
    overhead -= parts["response streaming (ProxiedResponse.__call__)"]
    framework = round(max(0.0, overhead), 1) if in_stack else 0.0
    breakdown.insert(3, ("  of which routing, middleware, dependencies", framework))
    outside = 100.0 - parts["uvicorn: ASGI task (run_asgi), all app work"]
    breakdown.append(
        ("event loop, protocol callbacks, I/O outside the ASGI task", round(outside, 1))
    )
    busy = None
    if rate_hz and seconds:
        busy = round(min(1.0, total / (rate_hz * seconds)), 3)
    return {
        "samples": total,
        "busy_share": busy,
        "breakdown_percent": breakdown,
        "inclusive_percent": shares(inclusive) if total else [],
        "self_percent": shares(own) if total else [],
        "self_percent_by_package": shares(packages) if total else [],
    }


def profile_gateway(
    upstream: str, workdir: Path, outdir: Path, concurrency: int, duration_s: float
) -> dict[str, Any]:
    """Load the one-worker gateway with small requests while py-spy samples it."""
    py_spy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    if not Path(py_spy).exists():
        return {"skipped": "py-spy is not installed (pip install py-spy)"}
    outdir.mkdir(parents=True, exist_ok=True)
    with start_target("gateway", upstream, workdir) as target:
        assert target.pid is not None
        load_args = [PYTHON, "-m", "loadtest.loadgen", "--url", target.url + "/v1/images"]
        load_args += ["--concurrency", str(concurrency), "--warmup", "1"]
        load_args += ["--duration", str(2 * duration_s + 2)]
        with spawned(load_args) as load:
            time.sleep(1.5)
            record = [py_spy, "record", "--pid", str(target.pid), "--rate", str(PROFILE_RATE_HZ)]
            record += ["--duration", str(int(duration_s))]
            svg, raw = outdir / "gateway.svg", outdir / "gateway.collapsed"
            for path, fmt in ((svg, "flamegraph"), (raw, "raw")):
                subprocess.run(
                    [*record, "--format", fmt, "--output", str(path)],
                    capture_output=True,
                    timeout=duration_s + 30,
                    check=False,
                )
            load.wait(timeout=2 * duration_s + 30)
    if not raw.exists():
        return {"skipped": "py-spy produced no output (is ptrace allowed?)"}
    summary = summarize_profile(raw, rate_hz=PROFILE_RATE_HZ, seconds=int(duration_s))
    summary["files"] = [str(svg), str(raw)]
    (outdir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


# -- the run -------------------------------------------------------------------------------


def _commit() -> str | None:
    """The checkout's short commit, `+dirty` when gateway/ or backends/ have changes."""
    root = Path(__file__).resolve().parent.parent
    git = shutil.which("git")
    if git is None or not (root / ".git").exists():
        return None
    head = subprocess.run(
        [git, "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=False
    ).stdout.strip()
    status = subprocess.run(
        [git, "status", "--porcelain", "gateway", "backends"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{head}+dirty" if head and status else head or None


def environment() -> dict[str, Any]:
    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    nginx = shutil.which("nginx")
    nginx_version = None
    if nginx is not None:
        done = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False)
        nginx_version = done.stderr.strip().removeprefix("nginx version: ")
    return {
        "commit": _commit(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "versions": {
            p: version(p)
            for p in ("uvicorn", "uvloop", "httptools", "fastapi", "starlette", "aiohttp", "httpx")
        },
        "nginx": nginx_version,
    }


def measure_target(
    name: str, payload: str, upstream: str, workdir: Path, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Start one proxy and run the closed-loop (and, small payload, paced) passes through it."""
    rows: list[dict[str, Any]] = []
    with start_target(name, upstream, workdir) as target:
        if target.skipped:
            return [
                {"payload": payload, "mode": "closed", "target": name, "skipped": target.skipped}
            ]
        passes: list[float | None] = [None]
        if payload == "small" and args.paced_rate:
            passes.append(args.paced_rate)
        for rate in passes:
            result = run_load(
                target.url,
                concurrency=args.concurrency,
                duration_s=args.duration,
                warmup_s=args.warmup,
                rate_per_s=rate,
                cpu_pids=descendants(target.pid) if target.pid is not None else [],
            )
            mode = "closed" if rate is None else "paced"
            rows.append({"payload": payload, "mode": mode, "target": name} | result)
            print(
                f"{payload:5} {name:11} {mode:6} {result['requests_per_s']:9.0f} req/s"
                f"  p50 {result['p50_ms']:7.2f} ms  p99 {result['p99_ms']:7.2f} ms"
                f"  errors {result['errors']}",
                flush=True,
            )
    return rows


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else text[:300]


def run(args: argparse.Namespace) -> dict[str, Any]:
    targets = list(args.targets)
    if args.workers > 1 and "gateway" in targets:
        targets.insert(targets.index("gateway") + 1, f"gateway-x{args.workers}")
    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {
        "command": "python -m loadtest.overhead " + " ".join(args.argv),
        "settings": {
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "paced_rate_per_s": args.paced_rate,
            "workers": args.workers,
        },
        "environment": environment(),
    }
    with tempfile.TemporaryDirectory(prefix="sd-overhead-") as tmp:
        workdir = Path(tmp)
        with fake_backend(workdir) as backend:
            for payload in args.payloads:
                for name in targets:
                    try:
                        rows += measure_target(name, payload, backend[payload], workdir, args)
                    except RuntimeError as exc:
                        # One proxy failing (e.g. not starting) must not lose the others' rows.
                        reason = f"failed: {_last_line(str(exc))}"
                        print(f"{payload:5} {name:11} {reason}", flush=True)
                        rows.append(
                            {"payload": payload, "mode": "closed", "target": name}
                            | {"skipped": reason}
                        )
            if args.profile is not None:
                report["profile"] = profile_gateway(
                    backend["small"], workdir, args.profile, args.concurrency, args.profile_seconds
                )
    compare(rows)
    report["environment"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    report["rows"] = rows
    report["ratios"] = ratios(rows)
    report["targets"] = verdicts(rows)
    return report


def print_report(report: dict[str, Any]) -> None:
    env = report["environment"]
    print(
        f"\n== overhead: {env['cpus']} CPUs, Python {env['python']}, concurrency "
        f"{report['settings']['concurrency']}, {report['settings']['duration_s']:g} s per run"
    )
    print(table(report["rows"]))
    for payload, r in report["ratios"].items():
        cells = ", ".join(f"{k.replace('_', ' ')} {_fmt(v)}" for k, v in r.items())
        print(f"{payload}: {cells}")
    print("\n== targets (one gateway worker)")
    for c in report["targets"]:
        state = {True: "met", False: "MISSED", None: "n/a"}[c["met"]]
        print(f"  {state:6} {c['target']}: {_fmt(c['value'])} (limit {c['limit']:g})")
    profile = report.get("profile")
    if profile and not profile.get("skipped"):
        busy = profile.get("busy_share")
        print(
            f"\n== gateway profile: {profile['samples']} busy samples"
            + (f", busy {busy:.0%} of the sampled time" if busy is not None else "")
        )
        print("   share of busy samples in each part of a request")
        for name, share in profile["breakdown_percent"]:
            print(f"  {share:5.1f}%  {name}")
        print("   self time, top functions")
        for name, share in profile["self_percent"][:15]:
            print(f"  {share:5.1f}%  {name}")
    elif profile:
        print(f"\nprofile skipped: {profile['skipped']}")


def _csv(choices: Sequence[str]) -> Any:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}")
        return items

    return parse


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m loadtest.overhead", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--concurrency", type=int, default=16, help="connections")
    parser.add_argument("--workers", type=int, default=1, help="also run the gateway with N")
    parser.add_argument("--out", type=Path, default=Path("overhead.json"), help="JSON report")
    parser.add_argument("--targets", type=_csv(TARGETS), default=list(TARGETS))
    parser.add_argument("--payloads", type=_csv(PAYLOADS), default=list(PAYLOADS))
    parser.add_argument(
        "--paced-rate",
        type=float,
        default=500.0,
        help="small requests/s of the paced pass (0: off)",
    )
    parser.add_argument("--profile", type=Path, default=None, help="py-spy output directory")
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.concurrency < 1 or args.workers < 1:
        parser.error("--duration, --concurrency and --workers must be positive")
    args.argv = argv
    report = run(args)
    print_report(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
