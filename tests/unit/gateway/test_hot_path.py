"""Pieces of the per-request path made cheaper: they must behave as before.

- `_HeadHoldingTransport` sends a small response's head and body in one write,
  and never loses, reorders or delays anything else;
- `RequestIds` keeps the 32-hex-digit form and honours a client's own id;
- `GatewayMetrics.request_done` / `attempt` count exactly what `labels()` did;
- `tune_gc` freezes what start-up made and raises the young-generation threshold.
"""

from __future__ import annotations

import asyncio
import gc
import re
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.api import RequestIds, image_headers
from gateway.cli import GC_YOUNG_THRESHOLD, tune_gc
from gateway.httpserver import HELD_HEAD_MAX_BODY_BYTES, _can_hold, _HeadHoldingTransport
from gateway.metrics import GatewayMetrics
from gateway.scheduling.types import Snapshot

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def cycle(method: str = "POST") -> SimpleNamespace:
    """The attributes of uvicorn's RequestResponseCycle the transport reads."""
    return SimpleNamespace(
        response_started=False,
        response_complete=False,
        chunked_encoding=None,
        expected_content_length=0,
        scope={"method": method},
    )


def start(c: SimpleNamespace, length: int | None) -> None:
    """What uvicorn's send does to the cycle for `http.response.start`, before writing the head."""
    c.response_started = True
    if length is None:
        c.chunked_encoding = True
    else:
        c.chunked_encoding = False
        c.expected_content_length = length


def test_a_small_response_leaves_in_one_write() -> None:
    real, c = RecordingTransport(), cycle()
    transport = _HeadHoldingTransport(real, c)  # type: ignore[arg-type]
    start(c, 5)
    transport.write(HEAD)
    assert real.writes == []
    transport.write(b"hello")
    transport.write(b"")  # the closing empty body message
    assert real.writes == [HEAD + b"hello"]


@pytest.mark.parametrize(
    ("method", "length"),
    [
        ("POST", HELD_HEAD_MAX_BODY_BYTES + 1),
        ("POST", None),
        ("POST", 0),
        ("HEAD", 5),
    ],
    ids=["large-body", "chunked", "empty-body", "head-request"],
)
def test_other_heads_go_out_at_once(method: str, length: int | None) -> None:
    real, c = RecordingTransport(), cycle(method)
    transport = _HeadHoldingTransport(real, c)  # type: ignore[arg-type]
    start(c, length)
    transport.write(HEAD)
    assert real.writes == [HEAD]
    transport.write(b"body")
    assert real.writes == [HEAD, b"body"]


def test_writes_before_the_response_pass_straight_through() -> None:
    real, c = RecordingTransport(), cycle()
    transport = _HeadHoldingTransport(real, c)  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert real.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    start(c, 5)
    transport.write(HEAD)
    transport.write(b"hello")
    assert real.writes[1:] == [HEAD + b"hello"]


def test_close_sends_a_held_head_first() -> None:
    real, c = RecordingTransport(), cycle()
    transport = _HeadHoldingTransport(real, c)  # type: ignore[arg-type]
    start(c, 5)
    transport.write(HEAD)
    transport.close()
    assert (real.writes, real.closed) == ([HEAD], True)


def test_request_ids_are_32_hex_digits_and_unique() -> None:
    ids = RequestIds()
    made = [ids.of(None) for _ in range(1000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in made)
    assert len(set(made)) == len(made)
    assert RequestIds().of(None)[:16] != ids.of(None)[:16]  # per-worker random prefix
    assert ids.of("abc-123.x") == "abc-123.x"
    assert re.fullmatch(r"[0-9a-f]{32}", ids.of("bad id <script>"))


def test_image_headers_read_once_first_wins() -> None:
    scope = {
        "headers": [
            (b"x-priority", b"batch"),
            (b"x-priority", b"interactive"),
            (b"cookie", b"a=b"),
            (b"x-forwarded-for", b"10.0.0.1"),
        ]
    }
    assert image_headers(scope) == {b"x-priority": "batch", b"x-forwarded-for": "10.0.0.1"}


def test_cached_metric_children_count_like_labels() -> None:
    metrics = GatewayMetrics(lambda: Snapshot(pools=()), lambda: "auto")
    for _ in range(3):
        metrics.request_done("p", 200, "interactive", 0.2)
    metrics.request_done("none", 503, "batch")
    metrics.attempt("p", "ok")
    metrics.attempt("p", "ok")
    registry = metrics.registry
    requests = "sd_gateway_requests_total"
    assert (
        registry.get_sample_value(
            requests, {"pool": "p", "status": "200", "priority": "interactive"}
        )
        == 3.0
    )
    assert (
        registry.get_sample_value(requests, {"pool": "none", "status": "503", "priority": "batch"})
        == 1.0
    )
    assert (
        registry.get_sample_value(
            "sd_gateway_request_duration_seconds_count", {"pool": "p", "priority": "interactive"}
        )
        == 3.0
    )
    assert (
        registry.get_sample_value(
            "sd_gateway_request_duration_seconds_count", {"pool": "none", "priority": "batch"}
        )
        is None
    )
    assert (
        registry.get_sample_value("sd_gateway_attempts_total", {"pool": "p", "outcome": "ok"})
        == 2.0
    )


def test_tune_gc_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_a_cycle_without_the_expected_fields_is_not_wrapped() -> None:
    class Renamed:  # as if a uvicorn release had renamed its fields
        def __init__(self) -> None:
            self.started = False
            self.transport = None

    assert _can_hold(Renamed()) is False
    cycle = SimpleNamespace(
        response_started=False,
        chunked_encoding=None,
        expected_content_length=0,
        response_complete=False,
        scope={},
        transport=None,
    )
    assert _can_hold(cycle) is True
