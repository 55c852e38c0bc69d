"""SIGTERM drains a real `sd-backend serve` process: readiness 503, work finishes, exit 0."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys

import httpx


async def _start(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "backends",
        "serve",
        "--port",
        "0",
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        while True:
            line = (await proc.stdout.readline()).decode()
            assert line, "server exited before printing its address"
            if m := re.search(r"on (http://\S+)", line):
                return proc, m.group(1)


async def test_sigterm_drains_in_flight_work_then_exits() -> None:
    proc, url = await _start(
        "--profile",
        "g6",
        "--slots",
        "1",
        "--max-queue",
        "4",
        "--latency-s",
        "0.8",
        "--cold-start-s",
        "0",
        "--log-level",
        "warning",
    )
    try:
        async with httpx.AsyncClient(base_url=url, timeout=15) as c:
            async with asyncio.timeout(10):
                while (await c.get("/readiness")).status_code != 200:
                    await asyncio.sleep(0.05)
            in_flight = [
                asyncio.create_task(c.post("/v1/images", json={"prompt": f"p{i}"}))
                for i in range(2)
            ]
            async with asyncio.timeout(5):
                while (await c.get("/readiness")).json()["queue_depth"] < 2:
                    await asyncio.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(5):
                while (ready := await c.get("/readiness")).status_code == 200:
                    await asyncio.sleep(0.02)
            assert ready.status_code == 503 and ready.json()["reason"] == "draining"
            refused = await c.post("/v1/images", json={"prompt": "late"})
            assert refused.status_code == 503
            done = await asyncio.gather(*in_flight)
        assert [r.status_code for r in done] == [200, 200]
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_bad_options_exit_2_before_listening() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "backends",
        "serve",
        "--profile",
        "tpu9",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"unknown accelerator profile 'tpu9'" in err
