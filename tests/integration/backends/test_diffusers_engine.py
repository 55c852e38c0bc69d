"""The diffusers engine behind the real model server, on a tiny pipeline built in code.

Tests that generate images take the `tiny_sd` fixture, which skips them where
torch is missing; the start-up checks of the model directory need no torch.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from backends import cli
from backends.engines.diffusers_engine import DiffusersEngine
from backends.factory import EngineUnavailableError, build_engine
from backends.local import start_backend
from backends.png import decode_size
from backends.serving import RunningServer
from backends.settings import ServerSettings

FAST = {"width": 64, "height": 64, "steps": 2}


def engine_of(server: RunningServer) -> DiffusersEngine:
    engine = server.server.config.app.state.runtime.engine
    assert isinstance(engine, DiffusersEngine)
    return engine


def serve(model: Path, **options: Any) -> Any:
    """A diffusers model server on loopback, ready (loaded and warmed up)."""
    return start_backend(
        engine="diffusers", model=str(model), device="cpu", ready_timeout_s=60, **options
    )


@pytest.fixture
async def server(tiny_sd: Path) -> AsyncIterator[RunningServer]:
    async with serve(tiny_sd, max_batch=3) as running:
        yield running


def pngs(body: dict[str, Any]) -> list[bytes]:
    return [base64.b64decode(item["b64_json"]) for item in body["data"]]


async def test_serves_decodable_pngs_of_the_requested_size(server: RunningServer) -> None:
    image_mod = pytest.importorskip("PIL.Image", reason="decoding needs pillow")
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
        r = await c.post("/v1/images", json={"prompt": "a red cube", **FAST, "height": 128})
    assert r.status_code == 200
    body = r.json()
    assert (body["engine"], body["accelerator"]) == ("diffusers", "c6i.2xlarge")
    [png] = pngs(body)
    assert decode_size(png) == (64, 128)
    with image_mod.open(io.BytesIO(png)) as img:
        img.load()
        assert (img.size, img.mode) == ((64, 128), "RGB")
    assert body["inference_seconds"] > 0
    assert float(r.headers["X-Inference-Seconds"]) == pytest.approx(
        body["inference_seconds"], abs=1e-5
    )


async def test_same_seed_gives_identical_bytes(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
        bodies = [
            (await c.post("/v1/images", json={"prompt": "a cat", **FAST, "seed": seed})).json()
            for seed in (7, 7, 8)
        ]
    first, again, other = (pngs(b)[0] for b in bodies)
    assert first == again
    assert first != other
    assert [b["seed"] for b in bodies] == [7, 7, 8]


async def test_n_images_are_one_pipeline_call(server: RunningServer) -> None:
    engine = engine_of(server)
    calls_before = engine.pipeline_calls
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
        r = await c.post("/v1/images", json={"prompt": "a dog", **FAST, "seed": 1, "n": 3})
    assert r.status_code == 200
    images = pngs(r.json())
    assert len(images) == 3 and len(set(images)) == 3
    assert all(decode_size(png) == (64, 64) for png in images)
    assert engine.pipeline_calls == calls_before + 1


def gate_generations(
    engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch
) -> tuple[threading.Event, threading.Event]:
    """Make each generation hold its slot thread, after the real pipeline call, until `gate`.

    Returns (entered, gate): `entered` is set when a slot thread starts a generation.
    """
    entered, gate = threading.Event(), threading.Event()
    generate_sync = engine._generate_sync

    def gated(pipe: Any, **kwargs: Any) -> Any:
        entered.set()
        result = generate_sync(pipe, **kwargs)
        gate.wait(timeout=60)
        return result

    monkeypatch.setattr(engine, "_generate_sync", gated)
    return entered, gate


async def test_health_and_metrics_answer_during_a_long_generation(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Probes are answered while a slot thread is busy generating.

    The generation is real; the gate keeps its thread busy until the probes
    are done, so the overlap does not depend on timing.
    """
    entered, gate = gate_generations(engine_of(server), monkeypatch)
    slow = {"prompt": "slow", **FAST, "steps": 8, "seed": 3}
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as c:
        generation = asyncio.create_task(c.post("/v1/images", json=slow))
        try:
            assert await asyncio.to_thread(entered.wait, 30)
            probe_s = []
            for path in ("/health", "/metrics", "/health", "/readiness"):
                started = time.perf_counter()
                assert (await c.get(path)).status_code == 200
                probe_s.append(time.perf_counter() - started)
            assert not generation.done()
        finally:
            gate.set()
        r = await generation
    assert r.status_code == 200
    assert max(probe_s) < 2.0


async def test_queue_and_drain_hold_for_real_generations(
    tiny_sd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        serve(tiny_sd, slots=1, max_queue=0) as server,
        httpx.AsyncClient(base_url=server.url, timeout=60) as c,
    ):
        entered, gate = gate_generations(engine_of(server), monkeypatch)
        body = {"prompt": "q", **FAST, "seed": 1}
        first = asyncio.create_task(c.post("/v1/images", json=body))
        try:
            assert await asyncio.to_thread(entered.wait, 30)
            full = await c.post("/v1/images", json=body)
            server.server.config.app.state.runtime.begin_drain()
            draining = await c.post("/v1/images", json=body)
            readiness = await c.get("/readiness")
        finally:
            gate.set()
        done = await first
    assert full.status_code == 429 and full.json()["error"]["type"] == "queue_full"
    assert int(full.headers["Retry-After"]) >= 1
    assert draining.status_code == 503 and readiness.json()["reason"] == "draining"
    assert done.status_code == 200 and len(pngs(done.json())) == 1


# diffusers' Euler scheduler builds numpy arrays from tensors the numpy-2 way.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
async def test_sdxl_pipeline_serves_batches_and_repeats(tiny_sdxl: Path) -> None:
    body = {"prompt": "a cat", **FAST, "seed": 4, "n": 2}
    async with (
        serve(tiny_sdxl) as server,
        httpx.AsyncClient(base_url=server.url, timeout=60) as c,
    ):
        caps = (await c.get("/v1/capabilities")).json()
        first, again = [await c.post("/v1/images", json=body) for _ in range(2)]
    assert caps["extra"]["pipeline"] == "StableDiffusionXLPipeline"
    assert first.status_code == 200
    images = pngs(first.json())
    assert len(images) == 2 and all(decode_size(png) == (64, 64) for png in images)
    assert images == pngs(again.json())


async def test_ready_only_after_load_and_warm_up(tiny_sd: Path) -> None:
    async with (
        serve(tiny_sd, wait_ready=False) as server,
        httpx.AsyncClient(base_url=server.url, timeout=60) as c,
    ):
        engine = engine_of(server)
        async with asyncio.timeout(60):
            while (await c.get("/readiness")).status_code != 200:
                assert (await c.get("/health")).status_code == 200
                await asyncio.sleep(0.02)
        # One warm-up generation, before any request.
        assert engine.warmup_s is not None
        assert engine.pipeline_calls == 1
        metrics = (await c.get("/metrics")).text
        assert 'sd_backend_ready{accelerator="c6i.2xlarge"} 1.0' in metrics


async def test_capabilities_and_limits(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
        caps = (await c.get("/v1/capabilities")).json()
        too_many = await c.post("/v1/images", json={"prompt": "x", **FAST, "n": 4})
        too_big = await c.post("/v1/images", json={"prompt": "x", **FAST, "width": 2048})
        await c.post("/v1/images", json={"prompt": "x", **FAST})
        metrics = (await c.get("/metrics")).text
    assert caps["engine"] == "diffusers" and caps["shapes"] is None
    assert (caps["max_batch"], caps["max_width"], caps["max_height"]) == (3, 1024, 1024)
    assert caps["extra"]["device"] == "cpu" and caps["extra"]["dtype"] == "float32"
    assert caps["extra"]["native_shape"] == "64x64"
    assert too_many.status_code == 422 and "maximum batch of 3" in too_many.text
    assert too_big.status_code == 422 and "1024x1024" in too_big.text
    assert 'sd_backend_inference_seconds_count{accelerator="c6i.2xlarge"} 1.0' in metrics


# diffusers' multistep schedulers build numpy arrays from tensors the numpy-2 way.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
async def test_two_slots_serve_concurrently_with_their_own_schedulers(tiny_sd: Path) -> None:
    async with (
        serve(tiny_sd, slots=2, scheduler="dpmpp_2m") as server,
        httpx.AsyncClient(base_url=server.url, timeout=60) as c,
    ):
        caps = (await c.get("/v1/capabilities")).json()
        responses = await asyncio.gather(
            *(c.post("/v1/images", json={"prompt": "p", **FAST, "seed": s}) for s in (1, 2))
        )
        again = await c.post("/v1/images", json={"prompt": "p", **FAST, "seed": 1})
    assert caps["slots"] == 2 and caps["extra"]["scheduler"] == "DPMSolverMultistepScheduler"
    assert [r.status_code for r in responses] == [200, 200]
    assert pngs(responses[0].json()) != pngs(responses[1].json())
    assert pngs(again.json()) == pngs(responses[0].json())


async def test_bench_prints_throughput_and_percentiles(
    tiny_sd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "--model", str(tiny_sd), "--device", "cpu", "--width", "64"]
    argv += ["--height", "64", "--steps", "2", "--requests", "4", "--n", "2", "--json"]
    code = await asyncio.to_thread(cli.main, argv)
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["engine"], result["shape"], result["images"]) == ("diffusers", "64x64", 8)
    assert result["images_per_s"] > 0
    assert 0 < result["latency_p50_s"] <= result["latency_p95_s"]
    assert result["seconds_per_image_p50"] == pytest.approx(result["inference_p50_s"] / 2)


# start-up checks: no torch needed -------------------------------------------------


SERVE = [sys.executable, "-m", "backends", "serve", "--engine", "diffusers", "--port", "0"]


def test_missing_model_dir_exits_2_before_listening() -> None:
    proc = subprocess.run([*SERVE, "--model", "/nonexistent/sd"], capture_output=True, timeout=60)
    assert proc.returncode == 2
    assert b"model directory /nonexistent/sd does not exist" in proc.stderr
    assert b"http://" not in proc.stdout


def _safetensors(tensors: dict[str, int], data_len: int | None = None) -> bytes:
    """A safetensors file of float32 vectors of the given lengths (zeros)."""
    header: dict[str, Any] = {}
    offset = 0
    for name, length in tensors.items():
        header[name] = {
            "dtype": "F32",
            "shape": [length],
            "data_offsets": [offset, offset + 4 * length],
        }
        offset += 4 * length
    raw = orjson.dumps(header)
    return struct.pack("<Q", len(raw)) + raw + bytes(offset if data_len is None else data_len)


def _write_model(root: Path) -> Path:
    """A diffusers-shaped directory with fake weights (enough for the start-up checks)."""
    root.mkdir(parents=True, exist_ok=True)
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "safety_checker": [None, None],
    }
    (root / "model_index.json").write_text(json.dumps(index))
    for name in ("unet", "vae", "text_encoder"):
        (root / name).mkdir()
        (root / name / "config.json").write_text('{"sample_size": 64}')
        (root / name / "model.safetensors").write_bytes(_safetensors({"w": 4}))
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.json").write_text("{}")
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text("{}")
    return root


def _no_index(root: Path) -> None:
    (root / "model_index.json").unlink()


def _bad_json(root: Path) -> None:
    (root / "model_index.json").write_text("{not json")


def _img2img(root: Path) -> None:
    index = json.loads((root / "model_index.json").read_text())
    (root / "model_index.json").write_text(
        json.dumps(index | {"_class_name": "StableDiffusionImg2ImgPipeline"})
    )


def _no_unet(root: Path) -> None:
    for f in (root / "unet").iterdir():
        f.unlink()
    (root / "unet").rmdir()


def _no_weights(root: Path) -> None:
    (root / "vae" / "model.safetensors").unlink()


def _truncated(root: Path) -> None:
    (root / "text_encoder" / "model.safetensors").write_bytes(_safetensors({"w": 4}, 8))


def _unlisted(root: Path) -> None:
    index = json.loads((root / "model_index.json").read_text())
    del index["text_encoder"]
    (root / "model_index.json").write_text(json.dumps(index))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_no_index, "no model_index.json"),
        (_bad_json, "model_index.json is not valid JSON"),
        (_img2img, "'StableDiffusionImg2ImgPipeline' is not served here"),
        (_no_unet, "component 'unet' is listed in model_index.json but"),
        (_no_weights, "has no weights"),
        (_truncated, "model.safetensors is truncated"),
        (_unlisted, "lacks components: text_encoder"),
    ],
    ids=["no-index", "bad-json", "img2img", "no-unet", "no-weights", "truncated", "unlisted"],
)
def test_malformed_model_dir_is_refused_at_build(tmp_path: Path, damage: Any, message: str) -> None:
    model = _write_model(tmp_path / "m")
    damage(model)
    with pytest.raises(EngineUnavailableError, match=message.replace("(", r"\(")):
        build_engine(ServerSettings(engine="diffusers", model=str(model)))


def test_malformed_model_dir_exits_2_naming_the_file(tmp_path: Path) -> None:
    model = _write_model(tmp_path / "m")
    _truncated(model)
    proc = subprocess.run([*SERVE, "--model", str(model)], capture_output=True, timeout=60)
    assert proc.returncode == 2
    assert b"text_encoder/model.safetensors is truncated" in proc.stderr
    assert b"http://" not in proc.stdout
