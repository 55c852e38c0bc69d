"""The fault-injection suite, run as a test: real backend processes on 127.0.0.1."""

from __future__ import annotations

from loadtest.faults import scenarios


async def test_every_fault_is_routed_around_without_client_failures_or_restart() -> None:
    results = {r.scenario: r for r in await scenarios()}
    for name in (
        "kill -9 a replica mid-load",
        "stop a whole pool",
        "a pool that hangs after accepting",
        "a pool answering 429 to everything",
        "flapping readiness",
    ):
        r = results[name]
        assert r.client_failures == 0, (name, r.statuses)
        assert r.route_around_s is not None and r.route_around_s < 5.0, name
        assert r.recovered, name
    # bytes already sent cannot be retried: the clients that had a body cut short see it,
    # and the replicas are taken out at once
    cut = results["a backend that closes the connection mid-body"]
    assert 0 < cut.client_failures <= 12
    assert cut.requests - cut.client_failures > 50
    # with no pool up the gateway refuses (503 with Retry-After); nothing fails outside that window
    down = results["all pools down, then one back"]
    assert set(down.statuses) <= {"200", "503"}
    assert "0 outside that window" in down.notes
    assert down.recovered
