"""The image request contract shared by the model server and the gateway.

Limits are documented here once: a prompt (and a negative prompt) of at most
`MAX_PROMPT_CHARS` characters; width and height positive multiples of 8 up to
`MAX_SIDE_PX`; `n` in 1..`MAX_IMAGES`; `steps` in 1..`MAX_STEPS`;
`guidance_scale` in 0..`MAX_GUIDANCE`; `seed` in 0..2**32-1.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from backends.engines.base import GenerationRequest

MAX_PROMPT_CHARS = 2000
MAX_SIDE_PX = 2048
MAX_IMAGES = 4
MAX_STEPS = 150
MAX_GUIDANCE = 30.0
MAX_SEED = 2**32 - 1

StrictInt = Annotated[int, Field(strict=True)]
StrictFloat = Annotated[float, Field(strict=True)]
M = TypeVar("M", bound=BaseModel)


def _check_side(value: int) -> int:
    if value <= 0 or value % 8:
        raise ValueError("must be a positive multiple of 8")
    if value > MAX_SIDE_PX:
        raise ValueError(f"must be at most {MAX_SIDE_PX}")
    return value


def _check_prompt(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


class ImageRequest(BaseModel):
    """Body of `POST /v1/images`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    width: StrictInt = 512
    height: StrictInt = 512
    steps: StrictInt | None = Field(default=None, ge=1, le=MAX_STEPS)
    guidance_scale: StrictFloat | None = Field(default=None, ge=0.0, le=MAX_GUIDANCE)
    seed: StrictInt | None = Field(default=None, ge=0, le=MAX_SEED)
    n: StrictInt = Field(default=1, ge=1, le=MAX_IMAGES)

    _prompt = field_validator("prompt")(_check_prompt)
    _sides = field_validator("width", "height")(_check_side)

    def to_generation(self) -> GenerationRequest:
        return GenerationRequest(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            width=self.width,
            height=self.height,
            steps=self.steps,
            guidance_scale=self.guidance_scale,
            seed=self.seed,
            n=self.n,
        )


class GenImageRequest(BaseModel):
    """Body of `POST /genimage`, the shape of the paper's public sample servers."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    prompt: str = Field(max_length=MAX_PROMPT_CHARS)

    _prompt = field_validator("prompt")(_check_prompt)


class InvalidRequestError(ValueError):
    """A request body that cannot be served; `message` names the offending fields."""


def describe_validation_error(exc: ValidationError) -> str:
    """One human-readable line per problem: 'field: reason'."""
    parts = []
    for err in exc.errors(include_url=False):
        if err["type"] == "json_invalid":
            return "request body is not valid JSON"
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts) or "invalid request"


def parse_body(model: type[M], body: bytes) -> M:
    """Validate a JSON body; raises InvalidRequestError with a readable message."""
    if not body.strip():
        raise InvalidRequestError("request body is empty; expected a JSON object")
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequestError("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequestError(describe_validation_error(exc)) from None
