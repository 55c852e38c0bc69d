"""The README's first command, as a user runs it: `sd-gateway demo`."""

from __future__ import annotations

import re
import subprocess
import sys
import time


def test_demo_runs_the_story_and_exits_0_without_client_failures() -> None:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--duration", "20"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    elapsed = time.perf_counter() - started
    out = proc.stdout
    assert proc.returncode == 0, out[-2000:] + proc.stderr[-2000:]
    assert elapsed < 60
    # not a terminal: plain periodic lines, the story's acts, and the summary
    assert len(re.findall(r"^t=\s*\d+\.\ds\s+mode ", out, re.M)) >= 15
    for act in ("inf2 returns capacity errors", "inf2 loses a replica", "inf2 capacity is back"):
        assert act in out
    assert "mode auto/capacity" in out  # the shortfall switched the mode
    summary = out.split("== summary", 1)[1]
    assert re.search(r"client-visible failures 0\b", summary)
    assert re.search(r"interactive\s+p50 [\d.]+ s\s+p95 [\d.]+ s\s+SLO 2 s met by", summary)
    assert re.search(r"average cost \$[\d.]+ per 1k images; an even split", summary)
