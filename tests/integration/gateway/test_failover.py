"""Each failure kind, under load, with real simulated backends on 127.0.0.1.

While another pool has room the client must see zero failed requests, and
the faulted pool must stop receiving traffic within 2 s of the fault.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from loadtest.stack import closed_loop, last_increase, start_stack

LEAVE_WITHIN_S = 2.0
WATCH_S = 3.5


@pytest.mark.parametrize(
    "faults",
    [
        {"unavailable": True},
        {"capacity_error": True},
        {"error_rate": 0.6},
        {"latency_multiplier": 30.0},
    ],
    ids=["unavailable", "capacity-errors", "error-rate", "slow"],
)
async def test_traffic_leaves_a_faulted_pool_and_clients_see_no_failure(
    faults: dict[str, Any],
) -> None:
    async with start_stack() as stack:
        warm = await closed_loop(stack.client, 1.0)
        assert warm.share("inf2") > 0.5, "the cheapest pool should carry the load before the fault"
        load_task = asyncio.create_task(closed_loop(stack.client, WATCH_S + 0.5, load=warm))
        await asyncio.sleep(0.3)
        await stack.fault("inf2", **faults)
        stopped_after = await last_increase(stack, "inf2", WATCH_S)
        load = await load_task
    assert load.failures == [], f"{len(load.failures)} client-visible failures"
    assert stopped_after <= LEAVE_WITHIN_S, f"inf2 still got traffic {stopped_after:.2f} s in"


async def test_replica_killed_mid_load() -> None:
    async with start_stack() as stack:
        load_task = asyncio.create_task(closed_loop(stack.client, 3.0))
        await asyncio.sleep(0.8)
        victim = stack.backends["inf2"][0]
        # Hard stop: close the listening socket and every open connection at once.
        victim.server.force_exit = True
        victim.server.should_exit = True
        for server in victim.server.servers:
            server.close()
        for conn in list(victim.server.server_state.connections):
            conn.transport.abort()  # type: ignore[attr-defined]
        load = await load_task
        state = stack.app_gateway.describe()
    assert load.failures == []
    inf2 = next(p for p in state["pools"] if p["name"] == "inf2")
    dead = next(r for r in inf2["replicas"] if r["url"] == victim.url)
    assert not dead["healthy"]
    assert inf2["healthy_replicas"] == 1


async def test_no_capacity_anywhere_gives_503_with_retry_after() -> None:
    async with start_stack() as stack:
        for pool in ("inf2", "g5", "g6"):
            await stack.fault(pool, capacity_error=True)
        r = await stack.client.post("/v1/images", json={"prompt": "x"})
        assert r.status_code == 503
        assert int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["type"] == "no_capacity"
        b = await stack.client.post(
            "/v1/images", json={"prompt": "x"}, headers={"X-Priority": "batch"}
        )
        assert b.status_code == 429 and b.json()["error"]["type"] == "shed"


async def test_all_backends_failing_gives_502_without_internals() -> None:
    async with start_stack() as stack:
        for pool in ("inf2", "g5", "g6"):
            await stack.fault(pool, error_rate=1.0)
        r = await stack.client.post("/v1/images", json={"prompt": "x"})
        assert r.status_code == 502
        body = r.json()
        assert body["error"]["type"] == "upstream_error"
        assert "127.0.0.1" not in r.text and "Traceback" not in r.text
        assert r.headers["X-Request-ID"]


async def test_timeout_before_the_answer_fails_over() -> None:
    pools = (
        ("inf2", "inf2", 1, 0.05, 0.7582, ["512x512"]),
        ("g6", "g6", 1, 0.05, 0.8048, None),
    )
    async with start_stack(pools, read_timeout_s=0.5) as stack:
        await stack.fault("inf2", latency_multiplier=40.0)  # 2 s per image, read timeout 0.5 s
        r = await stack.client.post("/v1/images", json={"prompt": "x"})
        assert r.status_code == 200
        assert r.headers["X-Gateway-Pool"] == "g6"
        assert r.headers["X-Gateway-Attempts"] == "2"
        metrics = (await stack.client.get("/metrics")).text
        assert 'sd_gateway_failovers_total{pool="inf2",reason="timeout"} 1.0' in metrics
