"""The pure parts of the load tools: request building, comparisons, verdicts, profile summaries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadtest.fakebackend import LARGE_BODY_BYTES, image_body
from loadtest.loadgen import build_request, percentile
from loadtest.overhead import compare, ratios, summarize_profile, verdicts
from loadtest.soak import Sample, verdict


def test_fake_backend_bodies_have_the_promised_sizes() -> None:
    assert 150 <= len(image_body(None)) <= 300
    assert len(image_body(LARGE_BODY_BYTES)) == LARGE_BODY_BYTES


def test_build_request_is_one_http11_post_with_content_length() -> None:
    host, port, raw = build_request("http://127.0.0.1:8123/v1/images", b'{"prompt": "x"}')
    assert (host, port) == ("127.0.0.1", 8123)
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /v1/images HTTP/1.1\r\n")
    assert b"Content-Length: 15" in head
    assert body == b'{"prompt": "x"}'


def test_build_request_refuses_https() -> None:
    with pytest.raises(ValueError, match="http://"):
        build_request("https://127.0.0.1/v1/images", b"{}")


@pytest.mark.parametrize(
    ("q", "expected"), [(0.5, 50.0), (0.99, 99.0), (1.0, 99.0)], ids=["p50", "p99", "max"]
)
def test_percentile_of_sorted_values(q: float, expected: float) -> None:
    assert percentile([float(i) for i in range(100)], q) == expected


def _row(target: str, rps: float, p50: float, p99: float, **extra: Any) -> dict[str, Any]:
    return {
        "payload": extra.pop("payload", "small"),
        "mode": extra.pop("mode", "closed"),
        "target": target,
        "requests_per_s": rps,
        "p50_ms": p50,
        "p99_ms": p99,
        "target_rate_per_s": extra.pop("rate", None),
        **extra,
    }


def test_compare_adds_latency_over_direct_and_ratios() -> None:
    rows = [
        _row("direct", 10_000, 0.5, 1.0),
        _row("gateway", 4_000, 1.2, 4.0),
        _row("nginx", 8_000, 0.8, 2.0),
        _row("naive", 200, 80.0, 120.0),
        _row("direct", 1_000, 10.0, 20.0, payload="large"),
        _row("gateway", 250, 40.0, 90.0, payload="large"),
    ]
    compare(rows)
    gateway = rows[1]
    assert gateway["added_p50_ms"] == pytest.approx(0.7)
    assert gateway["added_p99_ms"] == pytest.approx(3.0)
    assert gateway["ratio_vs_direct"] == pytest.approx(0.4)
    r = ratios(rows)
    assert r["small"] == {
        "gateway_vs_nginx": 0.5,
        "gateway_vs_naive": 20.0,
        "gateway_vs_direct": 0.4,
    }
    assert r["large"]["gateway_vs_nginx"] is None
    met = {c["target"]: c["met"] for c in verdicts(rows)}
    assert met["added p50 ms, small, c=16 closed loop"] is True
    assert met["small requests/s"] is True
    assert met["large responses/s"] is True
    assert met["x naive throughput, small"] is True


def test_a_skipped_proxy_gets_no_comparison() -> None:
    rows = [_row("direct", 10_000, 0.5, 1.0), {"payload": "small", "mode": "closed"}]
    rows[1] |= {"target": "nginx", "skipped": "nginx is not on PATH"}
    compare(rows)
    assert "added_p50_ms" not in rows[1]


def _samples(rss: list[float], fds: list[int]) -> list[Sample]:
    return [
        Sample(10.0 * i, r, f, 100 * i, 0) for i, (r, f) in enumerate(zip(rss, fds, strict=True))
    ]


def test_soak_verdict_is_flat_below_the_thresholds_after_warmup() -> None:
    # The first sample (before warm-up) is ignored: start-up growth is not a leak.
    samples = _samples([40.0, 60.0, 60.5, 61.0], [10, 20, 21, 20])
    result = verdict(samples, warmup_s=10.0, rss_growth_mb=8.0, fd_growth=8)
    assert result["verdict"] == "flat"
    assert (result["rss_start_mb"], result["rss_end_mb"]) == (60.0, 61.0)


@pytest.mark.parametrize(
    ("rss", "fds"),
    [([60.0, 60.0, 70.0, 80.0], [20, 20, 20, 20]), ([60.0, 60.0, 60.0, 60.0], [20, 20, 30, 40])],
    ids=["memory", "descriptors"],
)
def test_soak_verdict_flags_growth(rss: list[float], fds: list[int]) -> None:
    result = verdict(_samples(rss, fds), warmup_s=10.0, rss_growth_mb=8.0, fd_growth=8)
    assert result["verdict"] == "growing"


def test_profile_summary_shares_and_breakdown(tmp_path: Path) -> None:
    collapsed = tmp_path / "p.collapsed"
    run_asgi = "RequestResponseCycle.run_asgi (uvicorn/protocols/http/httptools_impl.py:420)"
    decide = "Policy.decide (gateway/scheduling/policy.py:130)"
    loop = "Runner.run (asyncio/runners.py:118)"
    collapsed.write_text(f"{loop};{run_asgi};{decide} 3\n{loop} 1\n")
    summary = summarize_profile(collapsed, rate_hz=2, seconds=4)
    assert summary["samples"] == 4
    assert summary["busy_share"] == 0.5
    parts = dict(summary["breakdown_percent"])
    assert parts["    Policy.decide"] == 75.0
    assert parts["event loop, protocol callbacks, I/O outside the ASGI task"] == 25.0
    assert summary["self_percent"][0] == ("Policy.decide (gateway/scheduling/policy.py)", 75.0)
