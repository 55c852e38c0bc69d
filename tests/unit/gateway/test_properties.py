"""Property tests: no input makes request parsing or config loading raise anything unexpected."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.schemas import ImageRequest, InvalidRequestError, parse_body
from gateway.api import OpenAIImageRequest
from gateway.errors import InvalidRequestError as GatewayInvalid
from gateway.settings import ConfigError, settings_from_dict

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = [
    "prompt",
    "negative_prompt",
    "width",
    "height",
    "steps",
    "guidance_scale",
    "seed",
    "n",
    "size",
    "response_format",
]
bodies = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_are_refused(raw: bytes) -> None:
    try:
        parse_body(ImageRequest, raw)
    except InvalidRequestError as exc:
        assert str(exc)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
def test_arbitrary_objects_parse_or_are_refused_with_a_message(body: dict[str, Any]) -> None:
    raw = json.dumps(body, allow_nan=True).encode()
    try:
        req = parse_body(ImageRequest, raw)
    except InvalidRequestError as exc:
        assert str(exc)
        return
    assert req.width % 8 == 0 and 0 < req.width <= 2048
    assert 1 <= req.n <= 4


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
def test_openai_bodies_parse_or_are_refused(body: dict[str, Any]) -> None:
    raw = json.dumps(body, allow_nan=True).encode()
    try:
        parse_body(OpenAIImageRequest, raw).to_image_request()
    except (InvalidRequestError, GatewayInvalid) as exc:
        assert str(exc)


pool = st.fixed_dictionaries(
    {},
    optional={
        "name": json_values | st.sampled_from(["inf2", "g5"]),
        "accelerator": json_values,
        "price_per_hour": json_values | st.floats(min_value=-5, max_value=5),
        "expected_latency_seconds": json_values,
        "replicas": json_values | st.just(["http://127.0.0.1:9001"]),
        "dns": json_values,
        "shapes": json_values,
        "protocol": json_values,
    },
)
configs = st.fixed_dictionaries(
    {},
    optional={
        "mode": json_values | st.sampled_from(["auto", "cost", "turbo"]),
        "pools": st.lists(pool, max_size=3) | json_values,
        "port": json_values,
        "slo": json_values,
        "max_attempts": json_values,
    },
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_arbitrary_configs_load_or_raise_config_error(data: dict[str, Any]) -> None:
    try:
        settings_from_dict(data)
    except ConfigError as exc:
        assert "invalid gateway config" in str(exc)
