"""HTTP routes of the gateway: parse, call the router, map errors. No routing logic here."""

from __future__ import annotations

import asyncio
import hmac
import itertools
import os
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson
from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from backends.schemas import (
    MAX_IMAGES,
    MAX_PROMPT_CHARS,
    ImageRequest,
    describe_validation_error,
    parse_body,
)
from backends.schemas import (
    InvalidRequestError as BodyError,
)
from gateway.admission import parse_priority
from gateway.errors import (
    GatewayError,
    InvalidRequestError,
    NoCapacityError,
    NotFoundError,
    PayloadTooLargeError,
    RequestTimeoutError,
    UnauthorizedError,
)
from gateway.router import Routed
from gateway.security import client_address

if TYPE_CHECKING:
    from gateway.app import Gateway

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
JSON = "application/json"


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type=JSON, headers=headers)


def error_response(exc: GatewayError, request_id: str | None = None) -> Response:
    """The one mapping from a GatewayError to a status and `{"error": {"type", "message"}}`."""
    headers = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(exc.retry_after_s)
    if request_id:
        headers["X-Request-ID"] = request_id
    return json_response({"error": {"type": exc.kind, "message": exc.message}}, exc.status, headers)


class ProxiedResponse(Response):
    """Streams a routed backend body; always frees the upstream connection.

    With a declared length, the chunk that completes the body is sent as the
    last message (no empty message after it).
    """

    def __init__(self, routed: Routed, headers: dict[str, str]) -> None:
        self.routed = routed
        self.status_code = routed.status
        self.background = None
        self.raw_headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
        ]
        declared = routed.headers.get("content-length")
        self._length = int(declared) if declared is not None and declared.isdigit() else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            length, sent, more = self._length, 0, True
            async for chunk in self.routed.body:
                sent += len(chunk)
                more = sent != length
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
            if more:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.routed.close()


class OpenAIImageRequest(BaseModel):
    """Body of `POST /v1/images/generations` (OpenAI style)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    n: int = Field(default=1, ge=1, le=MAX_IMAGES, strict=True)
    size: str = "512x512"
    response_format: Literal["b64_json"] = "b64_json"
    negative_prompt: str | None = None
    steps: int | None = None
    seed: int | None = None
    guidance_scale: float | None = None

    @field_validator("size")
    @classmethod
    def _size(cls, value: str) -> str:
        if not re.fullmatch(r"[1-9][0-9]{0,4}x[1-9][0-9]{0,4}", value):
            raise ValueError("must look like 512x512")
        return value

    def to_image_request(self) -> ImageRequest:
        width, height = (int(v) for v in self.size.split("x"))
        data = self.model_dump(exclude={"size", "response_format"}, exclude_none=True)
        try:
            return ImageRequest.model_validate(data | {"width": width, "height": height})
        except ValidationError as exc:
            message = (
                describe_validation_error(exc).replace("width", "size").replace("height", "size")
            )
            raise InvalidRequestError(message) from None


def _proto(header: str | None, scope: Scope, settings: Any) -> str:
    """The client's scheme: from a trusted proxy's X-Forwarded-Proto, else our own."""
    if settings.trusted_proxies > 0 and header:
        value = header.split(",")[-1].strip().lower()
        if value in ("http", "https"):
            return value
    return str(scope.get("scheme", "http"))


# The request headers the image endpoint reads.
IMAGE_HEADERS = frozenset(
    {
        b"authorization",
        b"x-api-key",
        b"x-priority",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"content-length",
        b"x-request-id",
    }
)


def image_headers(scope: Scope) -> dict[bytes, str]:
    """The headers in `IMAGE_HEADERS`, decoded, read in one pass (the first of repeats wins).

    Names in an ASGI scope are already lower case.
    """
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in IMAGE_HEADERS and name not in found:
            found[name] = value.decode("latin-1")
    return found


class RequestIds:
    """Request ids for one worker: a random 64-bit prefix and a 64-bit counter, 32 hex digits.

    Unique across workers and restarts (the prefix) without a random draw per request.
    """

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"

    def of(self, given: str | None) -> str:
        """The client's `X-Request-ID` if it is well formed, else a new id."""
        if given is not None and REQUEST_ID.match(given):
            return given
        return self.next()


ImageEndpoint = Callable[[Request, bool], Awaitable[Response]]


def build_routes(
    gateway: Gateway, *, admin: bool, metrics: bool
) -> tuple[APIRouter, ImageEndpoint]:
    """The routes, and the image endpoint itself for the fast path (`FastPathApp`)."""
    routes = APIRouter()
    settings = gateway.settings

    async def read_body(request: Request, declared: str | None) -> bytes:
        limit = settings.max_body_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLargeError(f"request body over {limit} bytes")
        receive = request.receive
        chunks = []
        size = 0
        try:
            async with asyncio.timeout(settings.body_read_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise ClientDisconnect
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLargeError(f"request body over {limit} bytes")
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise RequestTimeoutError(
                f"request body not received within {settings.body_read_timeout_s:g} s"
            ) from None
        return b"".join(chunks)

    request_ids = RequestIds()
    observe = gateway.metrics

    async def generate(request: Request, openai: bool) -> Response:
        received_at = time.perf_counter()
        scope = request.scope
        incoming = image_headers(scope)
        request_id = request_ids.of(incoming.get(b"x-request-id"))
        priority_name = "interactive"
        try:
            gateway.keys.check(incoming.get(b"authorization"), incoming.get(b"x-api-key"))
            priority = parse_priority(incoming.get(b"x-priority"))
            priority_name = priority.value
            if gateway.router.budget.active_requests >= settings.max_in_flight_requests:
                raise NoCapacityError("the gateway is at its in-flight limit", retry_after_s=1)
            raw = await read_body(request, incoming.get(b"content-length"))
            try:
                if openai:
                    image = parse_body(OpenAIImageRequest, raw).to_image_request()
                else:
                    image = parse_body(ImageRequest, raw)
            except BodyError as exc:
                raise InvalidRequestError(str(exc)) from None
            client = scope.get("client")
            forwarded = {
                "X-Forwarded-For": client_address(
                    incoming.get(b"x-forwarded-for"),
                    client[0] if client else None,
                    settings.trusted_proxies,
                ),
                "X-Forwarded-Proto": _proto(incoming.get(b"x-forwarded-proto"), scope, settings),
            }
            routed = await gateway.router.route(image, priority, request_id, received_at, forwarded)
        except GatewayError as exc:
            observe.request_done("none", exc.status, priority_name)
            return error_response(exc, request_id)
        observe.request_done(
            routed.pool, routed.status, priority_name, time.perf_counter() - received_at
        )
        headers = routed.headers
        headers["X-Request-ID"] = request_id
        return ProxiedResponse(routed, headers)

    @routes.post("/v1/images")
    async def images(request: Request) -> Response:
        return await generate(request, openai=False)

    @routes.post("/v1/images/generations")
    async def images_openai(request: Request) -> Response:
        return await generate(request, openai=True)

    @routes.get("/v1/pools")
    async def pools() -> Response:
        return json_response(gateway.describe())

    @routes.get("/v1/pools/history")
    async def pools_history() -> Response:
        points = [{"t": round(t, 3), "pools": pools} for t, pools in gateway.control.status.history]
        return json_response({"points": points})

    if metrics:
        routes.include_router(metrics_routes(gateway))

    status_page = (Path(__file__).parent / "static" / "status.html").read_bytes()

    @routes.get("/")
    async def index() -> Response:
        return Response(status_page, media_type="text/html; charset=utf-8")

    @routes.get("/healthz")
    async def healthz() -> Response:
        return json_response({"status": "alive"})

    @routes.get("/readyz")
    async def readyz() -> Response:
        ready, reason = gateway.readiness()
        return json_response({"ready": ready, "reason": reason}, 200 if ready else 503)

    if admin:
        routes.include_router(admin_routes(gateway))
    return routes, generate


def metrics_routes(gateway: Gateway) -> APIRouter:
    routes = APIRouter()

    @routes.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return routes


class ModeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: str


class PriceBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    price_per_hour: float = Field(ge=0.0, le=1000.0)


def admin_routes(gateway: Gateway) -> APIRouter:
    routes = APIRouter(prefix="/admin")

    def authorize(request: Request) -> None:
        token = gateway.settings.admin_token
        if token is None:
            raise NotFoundError("the admin API is disabled (no admin_token configured)")
        given = request.headers.get("authorization", "")
        expected = f"Bearer {token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise UnauthorizedError("missing or wrong admin token")

    async def admin(request: Request, action: Any) -> Response:
        try:
            authorize(request)
            return json_response(await action())
        except GatewayError as exc:
            return error_response(exc)

    def body_of(model: type[BaseModel], raw: bytes) -> Any:
        try:
            return parse_body(model, raw)
        except BodyError as exc:
            raise InvalidRequestError(str(exc)) from None

    @routes.get("/mode")
    async def get_mode(request: Request) -> Response:
        async def action() -> Any:
            return {"mode": gateway.mode}

        return await admin(request, action)

    @routes.put("/mode")
    async def put_mode(request: Request) -> Response:
        async def action() -> Any:
            body = body_of(ModeBody, await request.body())
            gateway.set_mode(body.mode)
            return {"mode": gateway.mode}

        return await admin(request, action)

    async def set_draining(request: Request, name: str, draining: bool) -> Response:
        async def action() -> Any:
            gateway.pool(name).draining = draining
            gateway.control.tick()
            return {"pool": name, "draining": draining}

        return await admin(request, action)

    @routes.post("/pools/{name}/drain")
    async def drain(request: Request, name: str) -> Response:
        return await set_draining(request, name, True)

    @routes.delete("/pools/{name}/drain")
    async def undrain(request: Request, name: str) -> Response:
        return await set_draining(request, name, False)

    @routes.put("/pools/{name}/price")
    async def price(request: Request, name: str) -> Response:
        async def action() -> Any:
            pool = gateway.pool(name)
            body = body_of(PriceBody, await request.body())
            pool.price_per_hour_usd = body.price_per_hour
            gateway.control.tick()
            return {"pool": name, "price_per_hour": pool.price_per_hour_usd}

        return await admin(request, action)

    return routes


IMAGE_PATHS = {"/v1/images": False, "/v1/images/generations": True}


class FastPathApp(FastAPI):
    """FastAPI, except that the two image routes skip its routing and middleware.

    They are the hot path: every other route (status, admin, metrics, docs)
    goes through FastAPI as usual.
    """

    image_endpoint: ImageEndpoint | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.image_endpoint
        if (
            endpoint is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] in IMAGE_PATHS
        ):
            scope["app"] = self
            response = await endpoint(Request(scope, receive), IMAGE_PATHS[scope["path"]])
            await response(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def install(app: FastAPI, gateway: Gateway) -> FastAPI | None:
    """Mount the routes; with `admin_port` set, returns a second app for the admin port."""
    settings = gateway.settings
    separate = settings.admin_port is not None
    metrics_here = not (separate and settings.metrics_on_admin_port)
    routes, image_endpoint = build_routes(gateway, admin=not separate, metrics=metrics_here)
    app.include_router(routes)
    if isinstance(app, FastPathApp):
        app.image_endpoint = image_endpoint
    if not separate:
        return None
    admin_app = FastAPI(title="sd-gateway admin", docs_url=None, redoc_url=None, openapi_url=None)
    admin_app.include_router(admin_routes(gateway))
    if not metrics_here:
        admin_app.include_router(metrics_routes(gateway))
    return admin_app
