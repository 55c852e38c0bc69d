"""A model server that answers at once: the upstream of the overhead benchmark.

    python -m loadtest.fakebackend --small-port P --large-port Q

A raw asyncio protocol with the httptools parser, on uvloop when installed,
so that the backend costs as little CPU as possible and the benchmark
measures the proxies. `POST` (any path) gets a fixed `/v1/images`-shaped
answer: about 200 bytes on the small port, 1.5 MB (a base64 512x512 PNG) on
the large one. `GET /readiness` and `GET /health` answer `{"ready": true,
"queue_depth": 0}`; anything else gets 404. Keep-alive, HTTP/1.1 only.
Prints `ready` once both ports listen; exits on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from typing import cast

import httptools
import orjson

LARGE_BODY_BYTES = 1_500_000
# The backend reports a service time so the gateway's latency estimate stays positive.
INFERENCE_S = "0.001"
# A 1x1 PNG: the small answer is a real, if tiny, image.
TINY_PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4D"
    "wABBAEAX+XDSwAAAABJRU5ErkJggg=="
)


def image_body(size_bytes: int | None) -> bytes:
    """A `/v1/images` answer; with `size_bytes`, padded to exactly that many bytes."""

    def body(b64: str) -> bytes:
        return orjson.dumps(
            {
                "created": 1_700_000_000,
                "data": [{"b64_json": b64}],
                "inference_seconds": float(INFERENCE_S),
                "engine": "fake",
                "accelerator": "none",
            }
        )

    if size_bytes is None:
        return body(TINY_PNG_B64)
    padded = body("A" * (size_bytes - len(body(""))))
    assert len(padded) == size_bytes, len(padded)
    return padded


def http_response(status: str, body: bytes, extra: str = "") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        f"{extra}"
        "\r\n"
    )
    return head.encode("ascii") + body


IMAGE_HEADERS = f"x-queue-depth: 0\r\nx-inference-seconds: {INFERENCE_S}\r\n"
READY = http_response("200 OK", b'{"ready":true,"queue_depth":0}')
NOT_FOUND = http_response("404 Not Found", b'{"error":"not found"}')


class _Protocol(asyncio.Protocol):
    """One keep-alive connection; answers each request when its message completes."""

    def __init__(self, image: bytes) -> None:
        self._image = image
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            assert self._transport is not None
            self._transport.close()

    def on_url(self, url: bytes) -> None:
        self._url = url

    def on_message_complete(self) -> None:
        assert self._transport is not None
        method = self._parser.get_method()
        if method == b"POST":
            answer = self._image
        elif method == b"GET" and self._url in (b"/readiness", b"/health"):
            answer = READY
        else:
            answer = NOT_FOUND
        self._transport.write(answer)
        if not self._parser.should_keep_alive():
            self._transport.close()


async def serve(host: str, small_port: int, large_port: int) -> None:
    loop = asyncio.get_running_loop()
    small = http_response("200 OK", image_body(None), IMAGE_HEADERS)
    large = http_response("200 OK", image_body(LARGE_BODY_BYTES), IMAGE_HEADERS)
    servers = [
        await loop.create_server(lambda: _Protocol(small), host, small_port, backlog=2048),
        await loop.create_server(lambda: _Protocol(large), host, large_port, backlog=2048),
    ]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    try:
        await stop.wait()
    finally:
        for server in servers:
            server.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.fakebackend", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--small-port", type=int, required=True)
    parser.add_argument("--large-port", type=int, required=True)
    args = parser.parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(serve(args.host, args.small_port, args.large_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
