"""The control loop end to end: cost mode, capacity mode on a shortfall, and back."""

from __future__ import annotations

import asyncio
import time

from loadtest.stack import closed_loop, start_stack

POOLS = (
    ("inf2", "inf2", 2, 0.05, 0.7582, ["512x512"]),
    ("g5", "g5-cuda", 2, 0.08, 1.006, None),
)
FAST_CONTROL = {
    "control_interval_s": 0.2,
    "capacity_hold_s": 0.5,
    "capacity_mode_hold_s": 2.0,
    "recovery_hold_s": 0.5,
}


async def wait_for_mode(stack: object, mode: str, timeout_s: float) -> float:
    """Seconds until `/v1/pools` reports `mode` as the effective mode."""
    client = stack.client  # type: ignore[attr-defined]
    started = time.perf_counter()
    async with asyncio.timeout(timeout_s):
        while (await client.get("/v1/pools")).json()["effective_mode"] != mode:
            await asyncio.sleep(0.02)
    return time.perf_counter() - started


async def test_cost_then_capacity_on_shortfall_then_cost_after_the_hold() -> None:
    async with start_stack(POOLS, **FAST_CONTROL) as stack:
        # low load: two clients, far below inf2's capacity
        low = await closed_loop(stack.client, 2.0, workers=2)
        assert low.failures == []
        assert low.share("inf2", since_s=0.5) > 0.9
        pools = (await stack.client.get("/v1/pools")).json()
        assert pools["effective_mode"] == "cost"

        load = asyncio.create_task(closed_loop(stack.client, 4.0, workers=2))
        await asyncio.sleep(0.5)
        await stack.fault("inf2", capacity_error=True)
        switched_after = await wait_for_mode(stack, "capacity", timeout_s=2.0)
        during = await load
        assert during.failures == []
        assert switched_after < 2.0

        for server in stack.backends["inf2"]:
            await stack.admin.delete(server.url + "/admin/faults")
        after = asyncio.create_task(closed_loop(stack.client, 6.0, workers=2))
        back_after = await wait_for_mode(stack, "cost", timeout_s=6.0)
        late = await after
        assert late.failures == []
        # not before the hold time: the state machine does not flap back at once. The
        # hold counts from when the gateway last saw a capacity error, which can be up to
        # capacity_hold_s before the fault is lifted (no traffic reaches a constrained pool).
        hold = FAST_CONTROL["capacity_mode_hold_s"] - FAST_CONTROL["capacity_hold_s"]
        assert back_after >= hold
        assert back_after < 6.0
        transitions = (await stack.client.get("/v1/pools")).json()["transitions"]
        modes = [t["to"] for t in transitions if t["subject"] == "mode"]
        assert modes == ["capacity", "cost"]
        reasons = [t["reason"] for t in transitions if t["subject"] == "mode"]
        assert "inf2" in reasons[0]
        metrics = (await stack.client.get("/metrics")).text
        assert 'sd_gateway_transitions_total{kind="mode",subject="mode",to="cost"} 1.0' in metrics
        assert 'sd_gateway_pool_desired_replicas{pool="inf2"}' in metrics


async def test_batch_is_shed_first_when_capacity_is_short() -> None:
    async with start_stack(POOLS, control_interval_s=3600.0) as stack:
        gateway = stack.app_gateway
        gateway.control.status.batch_admit_fraction = 0.0  # as the loop sets it under a deficit
        batch = await stack.client.post(
            "/v1/images", json={"prompt": "x"}, headers={"X-Priority": "batch"}
        )
        interactive = await stack.client.post("/v1/images", json={"prompt": "x"})
        assert batch.status_code == 429
        assert batch.json()["error"]["type"] == "shed"
        assert int(batch.headers["Retry-After"]) >= 1
        assert interactive.status_code == 200
        metrics = (await stack.client.get("/metrics")).text
        assert 'sd_gateway_shed_total{priority="batch",reason="shortfall"} 1.0' in metrics


async def test_batch_may_use_a_pool_too_slow_for_interactive_work() -> None:
    pools = (
        # $/image: 0.05 $/h x 0.6 s is below 1.006 $/h x 0.05 s
        ("cheap-slow", "g6", 1, 0.6, 0.05, None),
        ("fast", "g5-cuda", 1, 0.05, 1.006, None),
    )
    slo = {"slo": {"interactive_seconds": 0.4, "batch_seconds": 30.0}}
    async with start_stack(pools, **slo) as stack:
        interactive = [
            (await stack.client.post("/v1/images", json={"prompt": "x"})).headers["X-Gateway-Pool"]
            for _ in range(4)
        ]
        batch = [
            (
                await stack.client.post(
                    "/v1/images", json={"prompt": "x"}, headers={"X-Priority": "batch"}
                )
            ).headers["X-Gateway-Pool"]
            for _ in range(3)
        ]
    assert set(interactive) == {"fast"}
    assert set(batch) == {"cheap-slow"}
