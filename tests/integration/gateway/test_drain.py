"""SIGTERM on a real `sd-gateway serve` process with requests in flight: nothing is dropped."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx


async def _spawn(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        while True:
            line = await proc.stdout.readline()
            assert line, "process exited before printing its address"
            if m := re.search(rb"on (http://\S+)", line):
                return proc, m.group(1).decode()


async def test_sigterm_turns_readiness_off_serves_through_the_delay_and_drops_nothing(
    tmp_path: Path,
) -> None:
    backend, backend_url = await _spawn(
        "-m", "backends", "serve", "--port", "0", "--profile", "g6", "--slots", "4",
        "--latency-s", "1.0", "--cold-start-s", "0", "--log-level", "warning",
    )  # fmt: skip
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "drain_delay_s: 1.5\nprobe_interval_s: 0.5\nprobe_timeout_s: 0.5\n"
        "pools:\n  - name: g6\n    accelerator: g6.xlarge\n    price_per_hour: 0.8048\n"
        f'    expected_latency_seconds: 1.0\n    replicas: ["{backend_url}"]\n'
    )
    gateway, url = await _spawn(
        "-m", "gateway", "serve", "--config", str(config), "--host", "127.0.0.1",
        "--port", "0", "--log-level", "warning",
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=url, timeout=20) as c:
            assert (await c.get("/readyz")).status_code == 200
            in_flight = [
                asyncio.create_task(c.post("/v1/images", json={"prompt": f"p{i}"}))
                for i in range(3)
            ]
            await asyncio.sleep(0.3)
            gateway.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.1)
            ready = await c.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["reason"] == "draining"
            late = await c.post("/v1/images", json={"prompt": "during the drain delay"})
            assert late.status_code == 200
            done = await asyncio.gather(*in_flight)
            assert [r.status_code for r in done] == [200, 200, 200]
        async with asyncio.timeout(15):
            assert await gateway.wait() == 0
    finally:
        for proc in (gateway, backend):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
