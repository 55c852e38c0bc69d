"""Authentication, limits and proxy hygiene over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest

from backends.serving import running_server
from gateway.app import create_app
from gateway.cli import server_options
from gateway.settings import settings_from_dict
from loadtest.stack import FAST_HEALTH, start_stack
from tests.integration.gateway.test_api import fixed_upstream

KEY = "sk-test-0123456789abcdef"


async def test_api_keys_rate_limits_and_open_probes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with start_stack(api_keys=(KEY,), api_key_rate_per_s=0.5, api_key_burst=2) as stack:
        c = stack.client
        missing = await c.post("/v1/images", json={"prompt": "x"})
        assert missing.status_code == 401
        assert missing.json()["error"]["type"] == "unauthorized"
        wrong = await c.post(
            "/v1/images", json={"prompt": "x"}, headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401
        ok = await c.post(
            "/v1/images", json={"prompt": "x"}, headers={"Authorization": f"Bearer {KEY}"}
        )
        assert ok.status_code == 200
        also = await c.post("/v1/images", json={"prompt": "x"}, headers={"X-API-Key": KEY})
        assert also.status_code == 200
        limited = await c.post("/v1/images", json={"prompt": "x"}, headers={"X-API-Key": KEY})
        assert limited.status_code == 429
        assert limited.json()["error"]["type"] == "rate_limited"
        assert int(limited.headers["Retry-After"]) >= 1
        for path in ("/healthz", "/readyz", "/metrics", "/v1/pools"):
            assert (await c.get(path)).status_code == 200, path
    assert KEY not in caplog.text


async def test_admin_api_on_its_own_port() -> None:
    async with start_stack(admin_token="t0k", admin_port=0, metrics_on_admin_port=True) as stack:
        main = stack.client
        assert (
            await main.get("/admin/mode", headers={"Authorization": "Bearer t0k"})
        ).status_code == 404
        assert (await main.get("/metrics")).status_code == 404
        admin_app = stack.app_gateway  # the gateway behind both apps
        app = create_app(admin_app.settings)
        assert app.state.admin_app is not None
        async with (
            running_server(app.state.admin_app, lifespan="off") as admin,
            httpx.AsyncClient(base_url=admin.url) as c,
        ):
            r = await c.get("/admin/mode", headers={"Authorization": "Bearer t0k"})
            assert r.json() == {"mode": "auto"}
            assert (await c.get("/metrics")).status_code == 200
            assert (await c.get("/admin/mode")).status_code == 401


async def test_oversized_headers_get_431() -> None:
    async with start_stack(max_header_bytes=2048) as stack:
        r = await stack.client.post(
            "/v1/images", json={"prompt": "x"}, headers={"X-Big": "a" * 4000}
        )
        assert r.status_code == 431
        assert r.json()["error"]["type"] == "headers_too_large"
        assert (await stack.client.get("/healthz")).status_code == 200


async def test_slowloris_headers_are_cut_off() -> None:
    async with start_stack(header_read_timeout_s=0.3) as stack:
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.gateway.port)
        writer.write(b"POST /v1/images HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        await writer.drain()
        async with asyncio.timeout(3):
            data = await reader.read()  # the server closes the connection
        assert data == b""
        writer.close()
        assert (await stack.client.get("/healthz")).status_code == 200


async def test_slow_body_gets_408() -> None:
    async with start_stack(body_read_timeout_s=0.3) as stack:
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.gateway.port)
        writer.write(
            b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"prompt": '
        )
        await writer.drain()
        async with asyncio.timeout(3):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408")
        writer.close()


@pytest.mark.parametrize(
    ("trusted", "xff", "expected"),
    [
        (0, "6.6.6.6", "127.0.0.1"),
        (1, "6.6.6.6, 10.1.2.3", "10.1.2.3"),
        (2, "6.6.6.6, 10.1.2.3, 10.0.0.9", "10.1.2.3"),
        (1, None, "127.0.0.1"),
    ],
    ids=["untrusted-header-ignored", "behind-an-alb", "two-proxies", "no-header"],
)
async def test_client_address_and_forwarded_headers(
    trusted: int, xff: str | None, expected: str
) -> None:
    seen: list[dict[str, str]] = []
    async with fixed_upstream(b'{"data": []}', seen) as url:
        pool: dict[str, Any] = {
            "name": "p",
            "accelerator": "x",
            "price_per_hour": 1.0,
            "replicas": [url],
        }
        settings = settings_from_dict(FAST_HEALTH | {"pools": [pool], "trusted_proxies": trusted})
        headers = {"Host": "evil.example", "X-Forwarded-Proto": "https"}
        if xff is not None:
            headers["X-Forwarded-For"] = xff
        async with (
            running_server(create_app(settings), **server_options(settings)) as gw,
            httpx.AsyncClient(base_url=gw.url) as c,
        ):
            r = await c.post("/v1/images", json={"prompt": "x"}, headers=headers)
    assert r.status_code == 200
    upstream = {k.lower(): v for k, v in seen[0].items()}
    assert upstream["x-forwarded-for"] == expected
    assert upstream["x-forwarded-proto"] == ("https" if trusted else "http")
    assert upstream["host"] != "evil.example"  # the client's Host never decides the target


async def test_backend_redirects_are_never_followed() -> None:
    from aiohttp import web

    followed: list[str] = []

    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    async def elsewhere(request: web.Request) -> web.Response:
        followed.append(request.path)
        return web.json_response({"data": []})

    async def ready(_: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    app = web.Application()
    app.router.add_post("/v1/images", redirect)
    app.router.add_route("*", "/elsewhere", elsewhere)
    app.router.add_get("/readiness", ready)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        pool = {"name": "p", "accelerator": "x", "price_per_hour": 1.0, "replicas": [url]}
        settings = settings_from_dict(FAST_HEALTH | {"pools": [pool]})
        async with (
            running_server(create_app(settings)) as gw,
            httpx.AsyncClient(base_url=gw.url) as c,
        ):
            r = await c.post("/v1/images", json={"prompt": "x"})
    finally:
        await runner.cleanup()
    assert r.status_code == 502
    assert followed == []
    assert "elsewhere" not in r.text


async def test_overload_sheds_fast_and_admitted_work_stays_near_its_objective() -> None:
    pools = (("g6", "g6", 1, 0.1, 0.8048, None),)  # one slot: 10 images/s at most
    async with start_stack(
        pools,
        backend_options={"g6": {"max_queue": 50}},
        overload_slo_factor=1.5,
        slo={"interactive_seconds": 0.5, "batch_seconds": 30.0},
    ) as stack:
        results: list[tuple[int, float, str | None]] = []

        async def one() -> None:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            r = await stack.client.post("/v1/images", json={"prompt": "x"})
            results.append((r.status_code, loop.time() - t0, r.headers.get("Retry-After")))

        # open loop at 50 requests/s for 3 s: five times what the pool carries
        tasks = []
        for _ in range(150):
            tasks.append(asyncio.create_task(one()))
            await asyncio.sleep(0.02)
        await asyncio.gather(*tasks)
        after = await stack.client.post("/v1/images", json={"prompt": "x"})
        pools_state = (await stack.client.get("/v1/pools")).json()
    ok = sorted(t for s, t, _ in results if s == 200)
    shed = sorted(t for s, t, _ in results if s == 503)
    assert ok
    assert shed, "some requests must be refused at 5x load"
    assert all(ra is not None for s, _, ra in results if s == 503)
    assert set(s for s, _, _ in results) <= {200, 503}
    assert shed[len(shed) // 2] < 0.1  # refusals come at once, not after queueing
    assert ok[int(0.95 * (len(ok) - 1))] < 0.5 * 1.5 + 0.5  # admitted work near its objective
    assert after.status_code == 200  # back to normal once the load drops
    assert pools_state["pools"][0]["outstanding"] == 0


async def test_overload_refusal_goes_by_the_replica_the_request_would_wait_at() -> None:
    # Two replicas, 0.1 s an image, a 0.1 s objective refused beyond 1.5x. One replica
    # reports 10 images queued: the pool's E_p (10 x 0.1 / 2 + 0.1 = 0.6 s) misses the
    # objective and is beyond 1.5x, but the idle replica would finish the request in 0.1 s.
    pools = (("g6", "g6", 2, 0.1, 0.8048, None),)
    async with start_stack(
        pools, overload_slo_factor=1.5, slo={"interactive_seconds": 0.1, "batch_seconds": 30.0}
    ) as stack:
        replicas = list(stack.app_gateway.registry.get("g6").replicas.values())
        replicas[0].reported_queue_depth = 10
        served = await stack.client.post("/v1/images", json={"prompt": "x"})
        # Both report 10: the soonest finish is about (10 - 1 + 0.5) x 0.1 + 0.1 = 1.05 s.
        for replica in replicas:
            replica.reported_queue_depth = 10
        refused = await stack.client.post("/v1/images", json={"prompt": "x"})
    assert served.status_code == 200
    assert served.headers["X-Gateway-Attempts"] == "1"
    assert refused.status_code == 503
    assert refused.json()["error"]["type"] == "no_capacity"
    assert int(refused.headers["Retry-After"]) in (1, 2)  # 1.05 s at the measured latency
