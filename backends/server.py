"""The model-server HTTP API: one shell for every engine.

`create_app(engine, settings)` builds the app; nothing lives at module level.
Routes parse, call `BackendRuntime`, and map its exceptions to status codes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from backends.clock import Clock
from backends.engines.base import Engine, EngineError, UnsupportedRequestError
from backends.faults import Faults
from backends.queue import QueueFullError
from backends.runtime import (
    BackendRuntime,
    InsufficientCapacityError,
    NotReadyError,
    Served,
)
from backends.schemas import (
    GenImageRequest,
    ImageRequest,
    InvalidRequestError,
    describe_validation_error,
    parse_body,
)
from backends.settings import ServerSettings

JSON = "application/json"


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type=JSON, headers=headers)


def error_response(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    """The one error body: `{"error": {"type", "message"}}`."""
    return json_response({"error": {"type": kind, "message": message}}, status, headers)


def create_app(
    engine: Engine,
    settings: ServerSettings,
    *,
    slots: int,
    prior_service_s: float,
    clock: Clock | None = None,
) -> FastAPI:
    """A model server for `engine`; loading starts with the app's lifespan."""
    runtime = BackendRuntime(
        engine, settings, slots=slots, prior_service_s=prior_service_s, clock=clock
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(runtime.load(), name="engine-load")
        try:
            yield
        finally:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
            await engine.close()

    app = FastAPI(title="sd-backend", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.runtime = runtime
    acc = runtime.capabilities.accelerator

    def queue_headers() -> dict[str, str]:
        return {"X-Queue-Depth": str(runtime.queue.depth)}

    async def serve(endpoint: str, body: ImageRequest, request: Request) -> Served | Response:
        """Run one request; returns the result or the error response to send."""
        batch = request.headers.get("x-priority", "").strip().lower() == "batch"
        try:
            return await runtime.generate(body.to_generation(), batch=batch)
        except NotReadyError as exc:
            headers = queue_headers() | {"Retry-After": str(exc.retry_after_s)}
            resp = error_response(503, "unavailable", f"server not ready: {exc.reason}", headers)
        except InsufficientCapacityError as exc:
            headers = queue_headers() | {"Retry-After": str(exc.retry_after_s)}
            resp = error_response(
                429, "insufficient_capacity", "insufficient capacity on this replica", headers
            )
        except QueueFullError as exc:
            headers = queue_headers() | {"Retry-After": str(exc.retry_after_s)}
            resp = error_response(429, "queue_full", str(exc), headers)
        except UnsupportedRequestError as exc:
            resp = error_response(422, "unsupported_request", str(exc), queue_headers())
        except EngineError as exc:
            resp = error_response(500, "engine_error", str(exc), queue_headers())
        runtime.metrics.requests.labels(acc, endpoint, str(resp.status_code)).inc()
        return resp

    def invalid(endpoint: str, exc: InvalidRequestError) -> Response:
        runtime.metrics.requests.labels(acc, endpoint, "422").inc()
        return error_response(422, "invalid_request", str(exc))

    @app.post("/v1/images")
    async def images(request: Request) -> Response:
        runtime.metrics.received.labels(acc, "images").inc()
        try:
            body = parse_body(ImageRequest, await request.body())
        except InvalidRequestError as exc:
            return invalid("images", exc)
        outcome = await serve("images", body, request)
        if isinstance(outcome, Response):
            return outcome
        runtime.metrics.requests.labels(acc, "images", "200").inc()
        payload = {
            "created": int(time.time()),
            "data": [
                {"b64_json": base64.b64encode(png).decode()} for png in outcome.result.images_png
            ],
            "inference_seconds": round(outcome.inference_seconds, 6),
            "queue_seconds": round(outcome.queue_wait_s, 6),
            "seed": outcome.result.seed,
            "engine": engine.name,
            "accelerator": acc,
        }
        headers = queue_headers() | {"X-Inference-Seconds": f"{outcome.inference_seconds:.6f}"}
        return json_response(payload, headers=headers)

    @app.post("/genimage")
    async def genimage(request: Request) -> Response:
        runtime.metrics.received.labels(acc, "genimage").inc()
        try:
            gen = parse_body(GenImageRequest, await request.body())
        except InvalidRequestError as exc:
            return invalid("genimage", exc)
        outcome = await serve("genimage", ImageRequest(prompt=gen.prompt), request)
        if isinstance(outcome, Response):
            return outcome
        runtime.metrics.requests.labels(acc, "genimage", "200").inc()
        payload = {
            "prompt": gen.prompt,
            "response": base64.b64encode(outcome.result.images_png[0]).decode(),
            "latency": round(outcome.inference_seconds, 6),
        }
        headers = queue_headers() | {"X-Inference-Seconds": f"{outcome.inference_seconds:.6f}"}
        return json_response(payload, headers=headers)

    @app.get("/health")
    async def health() -> Response:
        return json_response({"status": "alive", "phase": runtime.phase.value})

    @app.get("/readiness")
    async def readiness() -> Response:
        ready, reason = runtime.readiness()
        body = {"ready": ready, "reason": reason, "queue_depth": runtime.queue.depth}
        return json_response(body, 200 if ready else 503, queue_headers())

    @app.get("/v1/capabilities")
    async def capabilities() -> Response:
        caps = runtime.capabilities
        return json_response(
            {
                "engine": caps.engine,
                "accelerator": caps.accelerator,
                "shapes": list(caps.shapes) if caps.shapes is not None else None,
                "max_batch": caps.max_batch,
                "max_width": caps.max_width,
                "max_height": caps.max_height,
                "default_steps": caps.default_steps,
                "slots": runtime.queue.slots,
                "max_queue": runtime.queue.max_waiting,
                "expected_latency_s": caps.expected_latency_s,
                "price_per_hour_usd": caps.price_per_hour_usd,
                "extra": caps.extra,
            }
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        runtime.metrics.queue_depth.labels(acc).set(runtime.queue.depth)
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if settings.enable_fault_injection:
        _add_fault_routes(app, runtime)
    return app


def _add_fault_routes(app: FastAPI, runtime: BackendRuntime) -> None:
    @app.get("/admin/faults")
    async def get_faults() -> Response:
        return json_response(runtime.faults.model_dump())

    @app.post("/admin/faults")
    async def set_faults(request: Request) -> Response:
        """Set the given fault fields; fields not given keep their current value."""
        try:
            data = orjson.loads(await request.body() or b"{}")
            if not isinstance(data, dict):
                raise InvalidRequestError("request body must be a JSON object")
            faults = Faults.model_validate(runtime.faults.model_dump() | data)
        except orjson.JSONDecodeError:
            return error_response(422, "invalid_request", "request body is not valid JSON")
        except InvalidRequestError as exc:
            return error_response(422, "invalid_request", str(exc))
        except ValidationError as exc:
            return error_response(422, "invalid_request", describe_validation_error(exc))
        runtime.set_faults(faults)
        return json_response(faults.model_dump())

    @app.delete("/admin/faults")
    async def clear_faults() -> Response:
        runtime.set_faults(Faults())
        return json_response(runtime.faults.model_dump())
