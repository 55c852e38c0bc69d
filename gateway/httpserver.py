"""Connection-level limits the ASGI app cannot enforce: header size and header read time.

`LimitedHttpToolsProtocol` is uvicorn's httptools protocol with two guards:
- a request whose headers exceed `max_header_bytes` is answered `431` and the
  connection closed;
- a connection that has not finished sending a request's headers within
  `header_read_timeout_s` of its first byte (or of connecting) is closed, so
  a slowloris client cannot hold connections open.
Configure it with `limited_protocol(max_header_bytes, header_read_timeout_s)`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _HeaderLimitExceededError(Exception):
    pass


def _rejection(status: int, reason: str, kind: str, message: str) -> bytes:
    body = orjson.dumps({"error": {"type": kind, "message": message}})
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode()
    return head + body


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    max_header_bytes = 16 * 1024
    header_read_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._rejected = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        if self._header_timer is None:
            self._arm()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._rejected:
            super().send_400_response(msg)

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.max_header_bytes and not self._rejected:
            self._rejected = True
            self.transport.write(
                _rejection(
                    431,
                    "Request Header Fields Too Large",
                    "headers_too_large",
                    f"request line and headers over {self.max_header_bytes} bytes",
                )
            )
            self.transport.close()
            raise _HeaderLimitExceededError

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_read_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self._rejected = True
            self.transport.close()


class GatewayHttpProtocol(LimitedHttpToolsProtocol):
    """The gateway's protocol class; a module-level name so worker processes can import it."""


def limited_protocol(
    max_header_bytes: int, header_read_timeout_s: float
) -> type[HttpToolsProtocol]:
    """The protocol class, configured with these limits, for uvicorn's `http=` option.

    The limits are class attributes, set once per process (one gateway per process).
    """
    GatewayHttpProtocol.max_header_bytes = max_header_bytes
    GatewayHttpProtocol.header_read_timeout_s = header_read_timeout_s
    return GatewayHttpProtocol
