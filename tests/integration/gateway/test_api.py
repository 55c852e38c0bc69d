"""The gateway's HTTP contract over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from backends.png import decode_size
from backends.serving import running_server
from gateway.app import create_app
from gateway.settings import settings_from_dict
from loadtest.stack import FAST_HEALTH, start_stack

ADMIN = {"admin_token": "s3cret"}
BEARER = {"Authorization": "Bearer s3cret"}


async def test_images_headers_and_request_id() -> None:
    async with start_stack() as stack:
        r = await stack.client.post("/v1/images", json={"prompt": "a cat"})
        assert r.status_code == 200
        assert r.headers["X-Gateway-Pool"] == "inf2"
        assert r.headers["X-Gateway-Attempts"] == "1"
        assert 0 < float(r.headers["X-Image-Cost-USD"]) < 0.01
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-ID"])
        png = base64.b64decode(r.json()["data"][0]["b64_json"])
        assert decode_size(png) == (64, 64)
        given = await stack.client.post(
            "/v1/images", json={"prompt": "a cat"}, headers={"X-Request-ID": "abc-123.x"}
        )
        assert given.headers["X-Request-ID"] == "abc-123.x"
        hostile = await stack.client.post(
            "/v1/images",
            json={"prompt": "a cat"},
            headers={"X-Request-ID": b"bad id <script>" + b"\xe9"},
        )
        assert re.fullmatch(r"[0-9a-f]{32}", hostile.headers["X-Request-ID"])


async def test_openai_alias_and_shape_routing() -> None:
    async with start_stack() as stack:
        r = await stack.client.post(
            "/v1/images/generations",
            json={"prompt": "a cat", "n": 2, "size": "768x768", "response_format": "b64_json"},
        )
        assert r.status_code == 200
        assert r.headers["X-Gateway-Pool"] in ("g5", "g6")  # inf2 is compiled for 512x512
        assert [decode_size(base64.b64decode(d["b64_json"])) for d in r.json()["data"]] == [
            (96, 96),
            (96, 96),
        ]
        # n=2 at 512x512: inf2 (batch 1) cannot run it; the request moves on at no cost
        r2 = await stack.client.post("/v1/images/generations", json={"prompt": "x", "n": 2})
        assert r2.status_code == 200
        assert r2.headers["X-Gateway-Pool"] in ("g5", "g6")


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "needle"),
    [
        ("/v1/images", b"{nope", {}, 422, "not valid JSON"),
        ("/v1/images", b'{"prompt": "x", "width": 100}', {}, 422, "width"),
        ("/v1/images", b'{"prompt": "x"}', {"X-Priority": "urgent"}, 422, "X-Priority"),
        ("/v1/images/generations", b'{"prompt": "x", "size": "big"}', {}, 422, "size"),
        ("/v1/images/generations", b'{"prompt": "x", "size": "500x500"}', {}, 422, "size"),
        (
            "/v1/images/generations",
            b'{"prompt": "x", "response_format": "url"}',
            {},
            422,
            "b64_json",
        ),
        ("/v1/images", b'{"prompt": "' + b"x" * 5000 + b'"}', {}, 413, "bytes"),
    ],
    ids=[
        "non-json",
        "bad-width",
        "bad-priority",
        "bad-size",
        "size-not-multiple-of-8",
        "url-format",
        "too-large",
    ],
)
async def test_bad_input_gets_a_clear_json_error(
    path: str, body: bytes, headers: dict[str, str], status: int, needle: str
) -> None:
    async with start_stack(max_body_bytes=4096) as stack:
        r = await stack.client.post(path, content=body, headers=headers)
        assert r.status_code == status
        error = r.json()["error"]
        assert needle in error["message"]
        assert set(error) == {"type", "message"}


async def test_a_shape_no_pool_serves_is_refused() -> None:
    pools = (("inf2", "inf2", 1, 0.05, 0.7582, ["512x512"]),)
    async with start_stack(pools) as stack:
        r = await stack.client.post(
            "/v1/images", json={"prompt": "x", "width": 1024, "height": 1024}
        )
        assert r.status_code == 422
        assert "512x512" in r.json()["error"]["message"]


async def test_pools_metrics_health_ready() -> None:
    async with start_stack() as stack:
        for _ in range(3):
            await stack.client.post("/v1/images", json={"prompt": "x"})
        pools = (await stack.client.get("/v1/pools")).json()
        assert pools["mode"] == "auto"
        by_name = {p["name"]: p for p in pools["pools"]}
        assert set(by_name) == {"inf2", "g5", "g6"}
        inf2 = by_name["inf2"]
        assert inf2["healthy_replicas"] == 2
        assert inf2["latency_samples"] == 3
        assert inf2["capacity_state"] == "available"
        assert inf2["cost_per_image_usd"] < by_name["g5"]["cost_per_image_usd"]
        assert {"weight", "queue_s", "latency_s", "replicas"} <= set(inf2)
        metrics = (await stack.client.get("/metrics")).text
        assert (
            'sd_gateway_requests_total{pool="inf2",priority="interactive",status="200"} 3.0'
            in metrics
        )
        for name in (
            "sd_gateway_request_duration_seconds_bucket",
            "sd_gateway_overhead_seconds_bucket",
            'sd_gateway_pool_weight{pool="g6"}',
            'sd_gateway_pool_healthy_replicas{pool="inf2"} 2.0',
            'sd_gateway_pool_cost_per_image_usd{pool="inf2"}',
            'sd_gateway_pool_queue_seconds{pool="g5"}',
            'sd_gateway_mode{mode="auto"} 1.0',
        ):
            assert name in metrics, name
        assert (await stack.client.get("/healthz")).status_code == 200
        assert (await stack.client.get("/readyz")).status_code == 200
        for pool in ("inf2", "g5", "g6"):
            await stack.fault(pool, unavailable=True)
        async with asyncio.timeout(5):
            while (ready := await stack.client.get("/readyz")).status_code == 200:
                await asyncio.sleep(0.05)
        assert ready.status_code == 503


async def test_genimage_pools_are_translated_to_our_shape() -> None:
    async with start_stack(backend_options={}) as stack:
        urls = [s.url for s in stack.backends["g6"]]
    # a second gateway whose only pool speaks the sample servers' protocol
    async with start_stack((("g6", "g6", 1, 0.05, 0.8048, None),)) as stack:
        settings = settings_from_dict(
            FAST_HEALTH
            | {
                "pools": [
                    {
                        "name": "sample",
                        "accelerator": "g6.xlarge",
                        "price_per_hour": 0.8048,
                        "expected_latency_seconds": 0.05,
                        "protocol": "genimage",
                        "replicas": [s.url for s in stack.backends["g6"]],
                    }
                ]
            }
        )
        async with (
            running_server(create_app(settings)) as gw,
            httpx.AsyncClient(base_url=gw.url) as c,
        ):
            r = await c.post("/v1/images", json={"prompt": "a dog", "n": 2})
    assert urls  # the first stack ran and stopped cleanly
    assert r.status_code == 200
    body = r.json()
    assert body["engine"] == "genimage"
    assert body["accelerator"] == "g6.xlarge"
    assert len(body["data"]) == 2
    assert decode_size(base64.b64decode(body["data"][0]["b64_json"])) == (64, 64)
    assert r.headers["X-Gateway-Pool"] == "sample"


@contextlib.asynccontextmanager
async def fixed_upstream(body: bytes, seen: list[dict[str, str]]) -> AsyncIterator[str]:
    """A bare aiohttp backend that records request headers and answers `body`."""

    async def images(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        await request.read()
        return web.Response(
            body=body,
            content_type="application/json",
            headers={
                "X-Inference-Seconds": "0.5",
                "X-Internal-Secret": "hunter2",
                "Keep-Alive": "timeout=5",
            },
        )

    async def ready(_: web.Request) -> web.Response:
        return web.json_response({"ready": True, "queue_depth": 0})

    app = web.Application()
    app.router.add_post("/v1/images", images)
    app.router.add_get("/readiness", ready)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_body_streams_through_unchanged_and_headers_are_cleaned() -> None:
    payload = b'{"created": 1, "data": [{"b64_json": "' + b"A" * 1_500_000 + b'"}]}'
    seen: list[dict[str, str]] = []
    async with fixed_upstream(payload, seen) as url:
        pool: dict[str, Any] = {
            "name": "fixed",
            "accelerator": "test",
            "price_per_hour": 1.0,
            "replicas": [url],
        }
        settings = settings_from_dict(FAST_HEALTH | {"pools": [pool]})
        async with (
            running_server(create_app(settings)) as gw,
            httpx.AsyncClient(base_url=gw.url) as c,
        ):
            r = await c.post(
                "/v1/images",
                json={"prompt": "x"},
                headers={"X-Request-ID": "req-42", "Connection": "keep-alive", "Cookie": "a=b"},
            )
    assert r.status_code == 200
    assert r.content == payload
    assert r.headers["X-Inference-Seconds"] == "0.5"
    assert "X-Internal-Secret" not in r.headers
    assert "Keep-Alive" not in r.headers
    upstream = {k.lower(): v for k, v in seen[0].items()}
    assert upstream["x-request-id"] == "req-42"
    assert "cookie" not in upstream
    assert "accept-encoding" not in upstream  # bodies pass through: nothing may be compressed
    # cost of one image: $1/h for 0.5 s on one slot
    assert float(r.headers["X-Image-Cost-USD"]) == pytest.approx(1.0 * 0.5 / 3600, rel=1e-3)


async def test_admin_mode_price_and_drain() -> None:
    async with start_stack(**ADMIN) as stack:
        c = stack.client
        assert (await c.get("/admin/mode")).status_code == 401
        assert (
            await c.get("/admin/mode", headers={"Authorization": "Bearer nope"})
        ).status_code == 401
        assert (await c.get("/admin/mode", headers=BEARER)).json() == {"mode": "auto"}
        bad = await c.put("/admin/mode", json={"mode": "chaos"}, headers=BEARER)
        assert bad.status_code == 422
        assert (await c.put("/admin/mode", json={"mode": "capacity"}, headers=BEARER)).json() == {
            "mode": "capacity"
        }
        assert (await c.get("/v1/pools")).json()["policy"] == "capacity"
        await c.put("/admin/mode", json={"mode": "cost"}, headers=BEARER)
        # make g6 the cheapest pool: cost mode moves traffic there
        r = await c.put("/admin/pools/g6/price", json={"price_per_hour": 0.01}, headers=BEARER)
        assert r.status_code == 200
        pools = [
            (await c.post("/v1/images", json={"prompt": "x"})).headers["X-Gateway-Pool"]
            for _ in range(6)
        ]
        assert pools.count("g6") >= 4
        assert (await c.post("/admin/pools/g6/drain", headers=BEARER)).status_code == 200
        pools = [
            (await c.post("/v1/images", json={"prompt": "x"})).headers["X-Gateway-Pool"]
            for _ in range(6)
        ]
        assert "g6" not in pools
        missing = await c.post("/admin/pools/tpu/drain", headers=BEARER)
        assert missing.status_code == 404


async def test_admin_disabled_without_a_token() -> None:
    async with start_stack() as stack:
        r = await stack.client.get("/admin/mode", headers=BEARER)
        assert r.status_code == 404
        assert r.json()["error"]["type"] == "not_found"


async def test_capabilities_learned_from_replicas_steer_shapes() -> None:
    # no `shapes` in the config: the gateway learns inf2's compiled shape from /v1/capabilities
    pools = (
        ("inf2", "inf2", 1, 0.05, 0.7582, None),
        ("g6", "g6", 1, 0.05, 0.8048, None),
    )
    async with start_stack(pools) as stack:
        inf2 = next(
            p for p in (await stack.client.get("/v1/pools")).json()["pools"] if p["name"] == "inf2"
        )
        assert inf2["shapes"] == ["512x512"]
        big = [
            (
                await stack.client.post(
                    "/v1/images", json={"prompt": "x", "width": 768, "height": 768}
                )
            )
            for _ in range(4)
        ]
        assert [r.status_code for r in big] == [200] * 4
        assert {r.headers["X-Gateway-Pool"] for r in big} == {"g6"}
        assert {r.headers["X-Gateway-Attempts"] for r in big} == {"1"}  # not even tried on inf2
