"""The `Engine` protocol every model-server engine implements.

The server owns HTTP, admission and metrics; an engine owns the model. The
server calls `load` once before readiness, then `generate` at most `slots`
times concurrently, and `close` on shutdown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class EngineError(Exception):
    """The engine failed to produce an image (maps to HTTP 500)."""


class UnsupportedRequestError(EngineError):
    """The request asks for something this engine cannot run (maps to HTTP 422)."""


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One validated image request. `steps` and `guidance_scale` None mean engine defaults."""

    prompt: str
    negative_prompt: str | None = None
    width: int = 512
    height: int = 512
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    n: int = 1

    @property
    def shape(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """PNG-encoded images and the seconds the engine spent producing them."""

    images_png: tuple[bytes, ...]
    inference_seconds: float
    seed: int


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an engine can serve; published at `GET /v1/capabilities`.

    `shapes` None means any shape within `max_width` x `max_height`.
    """

    engine: str
    accelerator: str
    shapes: tuple[str, ...] | None
    max_batch: int
    max_width: int = 2048
    max_height: int = 2048
    default_steps: int = 10
    expected_latency_s: float | None = None
    price_per_hour_usd: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self, request: GenerationRequest) -> None:
        """Raise UnsupportedRequestError if `request` is outside these capabilities."""
        if self.shapes is not None and request.shape not in self.shapes:
            raise UnsupportedRequestError(
                f"shape {request.shape} is not supported; supported shapes: "
                + ", ".join(self.shapes)
            )
        if request.width > self.max_width or request.height > self.max_height:
            raise UnsupportedRequestError(
                f"shape {request.shape} exceeds the maximum {self.max_width}x{self.max_height}"
            )
        if request.n > self.max_batch:
            raise UnsupportedRequestError(
                f"n={request.n} exceeds this engine's maximum batch of {self.max_batch}"
            )


class Engine(Protocol):
    """A Stable Diffusion engine.

    `load` may take long (model load, compilation, warm-up) and raises
    EngineError when the model cannot be loaded. `generate` raises
    UnsupportedRequestError for requests outside `capabilities()` and
    EngineError for failures; it must not block the event loop.
    """

    name: str

    async def load(self) -> None: ...

    async def generate(self, request: GenerationRequest) -> GenerationResult: ...

    def capabilities(self) -> Capabilities: ...

    async def close(self) -> None: ...
