"""Fault injection over HTTP: each fault and its clearing."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import BackendFactory


async def test_unavailable_fails_readiness_and_requests(backend: BackendFactory) -> None:
    async with backend() as server, httpx.AsyncClient(base_url=server.url) as c:
        r = await c.post("/admin/faults", json={"unavailable": True})
        assert r.status_code == 200 and r.json()["unavailable"] is True
        assert (await c.get("/readiness")).status_code == 503
        r = await c.post("/v1/images", json={"prompt": "x"})
        assert r.status_code == 503 and "Retry-After" in r.headers
        await c.delete("/admin/faults")
        assert (await c.get("/readiness")).status_code == 200
        assert (await c.post("/v1/images", json={"prompt": "x"})).status_code == 200


async def test_capacity_error_is_a_429_saying_insufficient_capacity(
    backend: BackendFactory,
) -> None:
    async with backend() as server, httpx.AsyncClient(base_url=server.url) as c:
        await c.post("/admin/faults", json={"capacity_error": True})
        r = await c.post("/v1/images", json={"prompt": "x"})
        assert r.status_code == 429
        assert "insufficient capacity" in r.json()["error"]["message"]
        assert int(r.headers["Retry-After"]) >= 1
        # readiness stays up: a capacity shortfall is not a broken server
        assert (await c.get("/readiness")).status_code == 200


async def test_latency_multiplier_stretches_service_time(backend: BackendFactory) -> None:
    async with (
        backend(profile="g6", latency_s=0.05) as server,
        httpx.AsyncClient(base_url=server.url) as c,
    ):
        base = float(
            (await c.post("/v1/images", json={"prompt": "x"})).headers["X-Inference-Seconds"]
        )
        await c.post("/admin/faults", json={"latency_multiplier": 10})
        slow = await c.post("/v1/images", json={"prompt": "x"})
        slow_s = float(slow.headers["X-Inference-Seconds"])
    assert slow_s > 5 * base
    assert slow.elapsed.total_seconds() >= 0.9 * slow_s


async def test_error_rate_fails_that_share_of_requests(backend: BackendFactory) -> None:
    async with (
        backend(latency_s=0.001, seed=4) as server,
        httpx.AsyncClient(base_url=server.url) as c,
    ):
        await c.post("/admin/faults", json={"error_rate": 0.5})
        codes = [(await c.post("/v1/images", json={"prompt": "x"})).status_code for _ in range(60)]
        await c.post("/admin/faults", json={"error_rate": 1.0})
        r = await c.post("/v1/images", json={"prompt": "x"})
    assert set(codes) == {200, 500}
    assert 15 <= codes.count(500) <= 45
    assert r.status_code == 500 and r.json()["error"]["type"] == "engine_error"


async def test_faults_merge_and_validate(backend: BackendFactory) -> None:
    async with backend() as server, httpx.AsyncClient(base_url=server.url) as c:
        await c.post("/admin/faults", json={"error_rate": 0.2})
        r = await c.post("/admin/faults", json={"latency_multiplier": 3})
        assert r.json()["error_rate"] == 0.2 and r.json()["latency_multiplier"] == 3
        bad = await c.post("/admin/faults", json={"error_rate": 2})
        assert bad.status_code == 422 and "error_rate" in bad.json()["error"]["message"]
        unknown = await c.post("/admin/faults", json={"explode": True})
        assert unknown.status_code == 422 and "explode" in unknown.json()["error"]["message"]
        cleared = (await c.delete("/admin/faults")).json()
        assert cleared == {
            "unavailable": False,
            "capacity_error": False,
            "latency_multiplier": 1.0,
            "error_rate": 0.0,
        }


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
async def test_fault_routes_absent_without_the_flag(backend: BackendFactory, method: str) -> None:
    async with (
        backend(enable_fault_injection=False) as server,
        httpx.AsyncClient(base_url=server.url) as c,
    ):
        r = await c.request(method, "/admin/faults", json={"unavailable": True})
        assert r.status_code in (404, 405)
        assert (await c.get("/readiness")).status_code == 200
