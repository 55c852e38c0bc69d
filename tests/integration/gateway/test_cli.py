"""`sd-gateway serve`: config errors exit 2 before listening; a good config serves and drains."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

GOOD = """
mode: cost
drain_delay_s: 0.2
pools:
  - name: g6
    accelerator: g6.xlarge
    price_per_hour: 0.8048
    replicas: ["http://127.0.0.1:9"]
"""


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        (GOOD.replace("mode: cost", "mode: turbo"), "mode"),
        (GOOD.replace("0.8048", "-1"), "pools.0.price_per_hour"),
        (GOOD + GOOD.split("pools:")[1], "duplicate"),
        (GOOD.replace("http://127.0.0.1:9", "127.0.0.1:9"), "replica URL"),
        ("pools: [", "YAML"),
    ],
    ids=["unknown-mode", "negative-price", "duplicate-pool", "malformed-url", "broken-yaml"],
)
def test_bad_config_exits_2_naming_the_field(tmp_path: Path, yaml_text: str, needle: str) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml_text)
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert "listening" not in proc.stdout


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "nope.yaml" in proc.stderr


async def test_serves_then_exits_0_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(GOOD)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--config", str(config),
        "--host", "127.0.0.1", "--port", "0", "--log-level", "warning",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(20):
            while not (m := re.search(rb"on (http://\S+)", await proc.stdout.readline())):
                pass
        async with httpx.AsyncClient(base_url=m.group(1).decode()) as c:
            assert (await c.get("/healthz")).status_code == 200
            pools = (await c.get("/v1/pools")).json()
            assert pools["mode"] == "cost"
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
