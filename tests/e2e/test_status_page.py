"""The status page at `GET /`, rendered by a real headless Chromium."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import pytest

from loadtest.stack import closed_loop, start_stack

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


async def chromium(url: str, *extra: str) -> bytes:
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={profile}",
            *extra,
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0
    return out


async def test_status_page_shows_pools_mode_and_transitions(tmp_path: Path) -> None:
    screenshot = tmp_path / "status.png"
    async with start_stack(control_interval_s=0.2, capacity_hold_s=30.0) as stack:
        await closed_loop(stack.client, 1.0, workers=2)
        await stack.fault("inf2", capacity_error=True)
        await closed_loop(stack.client, 1.5, workers=2)
        page = stack.gateway.url + "/"
        dom = (await chromium(page, "--virtual-time-budget=4000", "--dump-dom")).decode()
        await chromium(
            page,
            "--virtual-time-budget=6000",
            "--window-size=1280,900",
            f"--screenshot={screenshot}",
        )
    # the script ran: the table and the mode badge are filled from /v1/pools
    for pool in ("inf2", "g5", "g6"):
        assert f"{pool} <small>" in dom
    assert "auto · capacity" in dom
    assert "constrained" in dom
    assert "preferred pool inf2" in dom  # the transition's reason
    assert "<polyline" in dom  # charts drew at least one series
    assert screenshot.stat().st_size > 10_000
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
