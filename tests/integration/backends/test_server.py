"""The model server over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64

import httpx
import pytest

from backends.png import decode_size
from tests.conftest import BackendFactory


async def test_images_contract(backend: BackendFactory) -> None:
    async with backend(profile="g6") as server, httpx.AsyncClient(base_url=server.url) as c:
        r = await c.post("/v1/images", json={"prompt": "a cat", "n": 2, "width": 768, "seed": 1})
        assert r.status_code == 200
        body = r.json()
        assert set(body) >= {"created", "data", "inference_seconds", "engine", "accelerator"}
        assert body["engine"] == "sim" and body["accelerator"] == "g6.xlarge"
        assert len(body["data"]) == 2
        png = base64.b64decode(body["data"][0]["b64_json"])
        assert decode_size(png) == (96, 64)
        assert float(r.headers["X-Inference-Seconds"]) == pytest.approx(
            body["inference_seconds"], abs=1e-5
        )
        assert r.headers["X-Queue-Depth"] == "0"


async def test_genimage_speaks_the_sample_servers_shape(backend: BackendFactory) -> None:
    async with backend() as server, httpx.AsyncClient(base_url=server.url) as c:
        r = await c.post("/genimage", json={"prompt": "a dog"})
        assert r.status_code == 200
        body = r.json()
        assert set(body) == {"prompt", "response", "latency"}
        assert body["prompt"] == "a dog"
        assert decode_size(base64.b64decode(body["response"])) == (64, 64)
        assert body["latency"] > 0


async def test_health_readiness_capabilities_metrics(backend: BackendFactory) -> None:
    async with backend(profile="inf2", slots=2, max_queue=5) as server:
        async with httpx.AsyncClient(base_url=server.url) as c:
            assert (await c.get("/health")).json()["status"] == "alive"
            ready = await c.get("/readiness")
            assert ready.status_code == 200 and ready.json()["ready"] is True
            caps = (await c.get("/v1/capabilities")).json()
            assert caps["shapes"] == ["512x512"]
            assert (caps["slots"], caps["max_queue"], caps["max_batch"]) == (2, 5, 1)
            assert caps["accelerator"] == "inf2.xlarge" and caps["engine"] == "sim"
            await c.post("/v1/images", json={"prompt": "x"})
            metrics = (await c.get("/metrics")).text
    labels = 'accelerator="inf2.xlarge"'
    assert f'sd_backend_requests_total{{{labels},endpoint="images",status="200"}} 1.0' in metrics
    assert f"sd_backend_inference_seconds_count{{{labels}}} 1.0" in metrics
    assert f"sd_backend_slots{{{labels}}} 2.0" in metrics
    assert f"sd_backend_ready{{{labels}}} 1.0" in metrics


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{oops", "not valid JSON"),
        (b'{"negative_prompt": "x"}', "prompt"),
        (b'{"prompt": "x", "width": 100}', "width"),
        (b'{"prompt": "x", "n": 9}', "n"),
        (b'{"prompt": "x", "steps": 1000}', "steps"),
    ],
    ids=["non-json", "missing-prompt", "bad-width", "bad-n", "bad-steps"],
)
async def test_bad_input_gets_422_json(backend: BackendFactory, body: bytes, field: str) -> None:
    async with backend() as server, httpx.AsyncClient(base_url=server.url) as c:
        r = await c.post("/v1/images", content=body)
        assert r.status_code == 422
        err = r.json()["error"]
        assert err["type"] == "invalid_request" and field in err["message"]


async def test_unsupported_shape_names_the_supported_ones(backend: BackendFactory) -> None:
    async with backend(profile="inf2") as server, httpx.AsyncClient(base_url=server.url) as c:
        r = await c.post("/v1/images", json={"prompt": "x", "width": 768, "height": 768})
        assert r.status_code == 422
        assert "512x512" in r.json()["error"]["message"]


async def test_full_waiting_room_gets_429_at_once(backend: BackendFactory) -> None:
    """1 slot + 2 waiting: of 8 concurrent requests 3 are served, 5 refused before any finishes."""
    async with (
        backend(profile="g6", slots=1, max_queue=2, latency_s=0.5) as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as c,
    ):
        finished: list[int] = []

        async def one() -> httpx.Response:
            r = await c.post("/v1/images", json={"prompt": "x"})
            finished.append(r.status_code)
            return r

        responses = await asyncio.gather(*(one() for _ in range(8)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 3 + [429] * 5
    # every refusal came back before the first success: no waiting on a timeout
    assert finished[:5] == [429] * 5
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1
            assert r.json()["error"]["type"] == "queue_full"


async def test_not_ready_during_cold_start(backend: BackendFactory) -> None:
    async with (
        backend(cold_start_s=1.0, wait_ready=False) as server,
        httpx.AsyncClient(base_url=server.url) as c,
    ):
        r = await c.get("/readiness")
        assert r.status_code == 503 and r.json()["reason"] == "loading"
        r = await c.post("/v1/images", json={"prompt": "x"})
        assert r.status_code == 503 and r.json()["error"]["type"] == "unavailable"
        assert (await c.get("/health")).status_code == 200


async def test_waiting_batch_work_lets_interactive_work_go_first(backend: BackendFactory) -> None:
    """1 slot busy, then batch, batch, interactive wait: the interactive one runs next."""
    async with (
        backend(profile="g6", slots=1, max_queue=4, latency_s=0.5) as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as c,
    ):
        done: list[str] = []

        async def one(name: str, priority: str) -> None:
            r = await c.post("/v1/images", json={"prompt": name}, headers={"X-Priority": priority})
            assert r.status_code == 200
            done.append(name)

        async def depth_reaches(n: int) -> None:
            """The server holds `n` requests (bounded: 200 polls of the readiness probe)."""
            for _ in range(200):
                if (await c.get("/readiness")).json()["queue_depth"] >= n:
                    return
                await asyncio.sleep(0.005)
            raise AssertionError(f"queue depth never reached {n}")

        tasks = []
        for depth, (name, priority) in enumerate(
            [
                ("first", "interactive"),
                ("batch-1", "batch"),
                ("batch-2", "BATCH"),
                ("interactive", "interactive"),
            ],
            start=1,
        ):
            tasks.append(asyncio.create_task(one(name, priority)))
            await depth_reaches(depth)  # in line before the next one is sent
        await asyncio.gather(*tasks)
    assert done == ["first", "interactive", "batch-1", "batch-2"]
