"""A fast HTTP/1.1 load generator: fixed keep-alive connections, closed loop or paced.

    python -m loadtest.loadgen --url http://127.0.0.1:P/v1/images
        [--concurrency 16] [--duration 10] [--warmup 2] [--rate R]

`concurrency` connections each send one request, wait for the whole
response, and send the next (closed loop). With `--rate`, the connections
share a schedule of `rate` requests per second instead (a request is never
sent before its slot; latency is measured from the send). Raw asyncio
protocols and the httptools parser on uvloop, bodies counted and dropped:
the client must not be the bottleneck (compare with a direct run).

Prints one JSON object: requests, errors, requests_per_s, latency
percentiles in ms, bytes per response (headers included), and the client's CPU share.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

from loadtest.procs import run_loop

DEFAULT_BODY = b'{"prompt": "a lighthouse on a cliff at dusk, oil painting", "width": 512}'


class _Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[int] | None = None
        self.received_bytes = 0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("connection closed mid-response"))

    def data_received(self, data: bytes) -> None:
        # Bytes on the wire, headers included: no per-body-chunk callback to slow the client.
        self.received_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_exception(exc)
            assert self._transport is not None
            self._transport.close()

    def on_message_complete(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(self._parser.get_status_code())
        if not self._parser.should_keep_alive() and self._transport is not None:
            self._transport.close()

    async def send(self, raw: bytes) -> int:
        """Write one request; returns the status once the whole response arrived."""
        assert self._transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(raw)
        return await self._waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


@dataclass
class _Tally:
    recording: bool = False
    all_requests: int = 0  # warm-up included, for CPU per request
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    received_bytes: int = 0


def build_request(url: str, body: bytes, headers: Sequence[str] = ()) -> tuple[str, int, bytes]:
    """(host, port, raw request bytes) for a POST of `body` to `url`."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"only http:// URLs are supported, got {url!r}")
    port = parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {parts.hostname}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *headers,
    ]
    return parts.hostname, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _connect(host: str, port: int) -> _Connection:
    _, conn = await asyncio.get_running_loop().create_connection(_Connection, host, port)
    return conn


async def generate(
    url: str,
    *,
    concurrency: int = 16,
    duration_s: float = 10.0,
    warmup_s: float = 2.0,
    rate_per_s: float | None = None,
    body: bytes = DEFAULT_BODY,
    headers: Sequence[str] = (),
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """Run the load; returns the report (see the module docstring)."""
    host, port, raw = build_request(url, body, headers)
    tally = _Tally()
    loop = asyncio.get_running_loop()
    started = loop.time()
    measure_from = started + warmup_s
    deadline = measure_from + duration_s
    next_slot = 0  # paced mode: index of the next scheduled request

    def record(status: int, latency_s: float, received: int) -> None:
        tally.all_requests += 1
        if not tally.recording:
            return
        tally.statuses[status] = tally.statuses.get(status, 0) + 1
        if status == 200:
            tally.latencies_s.append(latency_s)
            tally.received_bytes += received
        else:
            tally.errors += 1

    async def worker() -> None:
        nonlocal next_slot
        conn: _Connection | None = None
        try:
            while True:
                if rate_per_s is not None:
                    slot_at = started + next_slot / rate_per_s
                    next_slot += 1
                    if slot_at >= deadline:
                        return
                    delay = slot_at - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                if loop.time() >= deadline:
                    return
                sent = time.perf_counter()
                try:
                    if conn is None or conn.closed:
                        conn = await _connect(host, port)
                    before = conn.received_bytes
                    async with asyncio.timeout(timeout_s):
                        status = await conn.send(raw)
                    record(status, time.perf_counter() - sent, conn.received_bytes - before)
                except (OSError, TimeoutError, httptools.HttpParserError):
                    # Refused, reset or stuck: an error; back off a little, then a new connection.
                    record(0, time.perf_counter() - sent, 0)
                    if conn is not None:
                        conn.close()
                        conn = None
                    await asyncio.sleep(0.01)
        finally:
            if conn is not None:
                conn.close()

    async def recorder() -> tuple[float, float, float]:
        await asyncio.sleep(max(0.0, measure_from - loop.time()))
        tally.recording = True
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        tally.recording = False
        return time.perf_counter() - t0, time.process_time() - cpu0, t0

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    elapsed_s, cpu_s, _ = await recorder()
    await asyncio.gather(*workers)
    return report(tally, elapsed_s, cpu_s, concurrency, rate_per_s)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def report(
    tally: _Tally, elapsed_s: float, cpu_s: float, concurrency: int, rate_per_s: float | None
) -> dict[str, Any]:
    lat = sorted(tally.latencies_s)
    ok = len(lat)

    def ms(q: float) -> float:
        return round(1000 * percentile(lat, q), 3)

    return {
        "concurrency": concurrency,
        "target_rate_per_s": rate_per_s,
        "elapsed_s": round(elapsed_s, 3),
        "requests": ok + tally.errors,
        "all_requests": tally.all_requests,
        "errors": tally.errors,
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "requests_per_s": round(ok / elapsed_s, 1) if elapsed_s > 0 else 0.0,
        "p50_ms": ms(0.50),
        "p90_ms": ms(0.90),
        "p99_ms": ms(0.99),
        "max_ms": round(1000 * lat[-1], 3) if lat else float("nan"),
        "mean_ms": round(1000 * sum(lat) / ok, 3) if ok else float("nan"),
        "wire_bytes_per_response": tally.received_bytes // ok if ok else 0,
        "client_cpu_share": round(cpu_s / elapsed_s, 3) if elapsed_s > 0 else 0.0,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.loadgen", description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--rate", type=float, default=None, help="paced: requests per second")
    parser.add_argument("--body", default=DEFAULT_BODY.decode(), help="JSON request body")
    args = parser.parse_args(argv)
    result = run_loop(
        generate(
            args.url,
            concurrency=args.concurrency,
            duration_s=args.duration,
            warmup_s=args.warmup,
            rate_per_s=args.rate,
            body=args.body.encode(),
        )
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
