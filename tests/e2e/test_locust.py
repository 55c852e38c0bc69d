"""A short headless locust run through `loadtest/run-locust.sh` against an in-test gateway."""

from __future__ import annotations

import asyncio
import csv
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from loadtest.stack import start_stack

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "loadtest" / "run-locust.sh"

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("locust") is None,
        reason="locust is not installed (pip install -e '.[load]')",
    ),
    pytest.mark.skipif(shutil.which("bash") is None, reason="run-locust.sh needs bash"),
    pytest.mark.slow,
]


async def test_headless_locust_run_writes_csv_with_requests_and_no_failures(
    tmp_path: Path,
) -> None:
    out = tmp_path / "report"
    async with start_stack() as stack:
        # A subprocess, awaited without blocking: this loop keeps serving the stack.
        proc = await asyncio.create_subprocess_exec(
            "bash",
            str(SCRIPT),
            "--host",
            stack.gateway.url,
            "-t",
            "10s",
            "-u",
            "6",
            "-r",
            "6",
            "-o",
            str(out),
            env=os.environ | {"PYTHON": sys.executable},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=ROOT,
        )
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), timeout=90)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]

    with (out / "locust_stats.csv").open(newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 0, text[-3000:]
    assert int(total["Failure Count"]) == 0, (out / "locust_failures.csv").read_text()
    assert (out / "locust.html").stat().st_size > 0

    tally = json.loads((out / "tally.json").read_text())
    assert tally["images"] > 0
    assert set(tally["pool_share"]) <= {"inf2", "g5", "g6"}
    assert tally["cost_usd"] > 0
    assert "pool share" in text
