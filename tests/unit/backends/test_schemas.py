"""Validation of the image request body: every refusal names the field."""

from __future__ import annotations

import pytest

from backends.png import decode_size, encode_rgb
from backends.schemas import (
    MAX_PROMPT_CHARS,
    GenImageRequest,
    ImageRequest,
    InvalidRequestError,
    parse_body,
)


def test_defaults() -> None:
    req = parse_body(ImageRequest, b'{"prompt": "a cat"}')
    assert (req.width, req.height, req.n, req.steps, req.seed) == (512, 512, 1, None, None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"{}", "prompt: Field required"),
        (b'{"prompt": "   "}', "prompt: must not be empty"),
        (
            b'{"prompt": "' + b"a" * (MAX_PROMPT_CHARS + 1) + b'"}',
            "prompt: String should have at most",
        ),
        (b'{"prompt": "x", "width": 500}', "width: must be a positive multiple of 8"),
        (b'{"prompt": "x", "height": 0}', "height: must be a positive multiple of 8"),
        (b'{"prompt": "x", "width": 4096}', "width: must be at most 2048"),
        (b'{"prompt": "x", "width": "512"}', "width: Input should be a valid integer"),
        (b'{"prompt": "x", "n": 0}', "n: Input should be greater than or equal to 1"),
        (b'{"prompt": "x", "n": 5}', "n: Input should be less than or equal to 4"),
        (b'{"prompt": "x", "steps": 0}', "steps: Input should be greater than or equal to 1"),
        (b'{"prompt": "x", "steps": 151}', "steps: Input should be less than or equal to 150"),
        (b'{"prompt": "x", "seed": -1}', "seed: Input should be greater than or equal to 0"),
        (
            b'{"prompt": "x", "guidance_scale": "7"}',
            "guidance_scale: Input should be a valid number",
        ),
    ],
    ids=[
        "empty-body",
        "not-json",
        "array",
        "missing-prompt",
        "blank-prompt",
        "prompt-too-long",
        "width-not-multiple-of-8",
        "height-zero",
        "width-too-large",
        "width-string",
        "n-zero",
        "n-too-large",
        "steps-zero",
        "steps-too-many",
        "negative-seed",
        "guidance-string",
    ],
)
def test_bad_bodies_are_refused_with_the_field_named(body: bytes, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        parse_body(ImageRequest, body)


def test_genimage_body_needs_a_prompt() -> None:
    assert parse_body(GenImageRequest, b'{"prompt": "x"}').prompt == "x"
    with pytest.raises(InvalidRequestError, match="prompt"):
        parse_body(GenImageRequest, b'{"text": "x"}')


def test_png_round_trip_size_and_bad_input() -> None:
    png = encode_rgb(3, 2, bytes(18))
    assert decode_size(png) == (3, 2)
    with pytest.raises(ValueError, match="expected 18 bytes"):
        encode_rgb(3, 2, bytes(17))
    with pytest.raises(ValueError, match="not a PNG"):
        decode_size(b"GIF89a")
