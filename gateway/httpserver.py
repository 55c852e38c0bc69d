"""Connection-level limits the ASGI app cannot enforce: header size and header read time.

`LimitedHttpToolsProtocol` is uvicorn's httptools protocol with two guards:
- a request whose headers exceed `max_header_bytes` is answered `431` and the
  connection closed;
- a connection that has not finished sending a request's headers within
  `header_read_timeout_s` of its first byte (or of connecting) is closed, so
  a slowloris client cannot hold connections open. One periodic check per
  event loop enforces it (every `header_read_timeout_s / 10`, at most every
  second), rather than a timer armed and cancelled for every request.
Configure it with `limited_protocol(max_header_bytes, header_read_timeout_s)`.

It also sends a small response (a declared `Content-Length` of at most
`HELD_HEAD_MAX_BODY_BYTES`) in one `write()`: uvicorn writes the head when the
app sends `http.response.start` and the body on the next message, two
syscalls where one does (see `_HeadHoldingTransport`).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

# A response head is held back for the body only when the body is at most this
# long: a large or streamed body is not delayed behind its first chunk.
HELD_HEAD_MAX_BODY_BYTES = 16 * 1024


class _HeaderLimitExceededError(Exception):
    pass


class _HeadHoldingTransport(asyncio.Transport):
    """What one request's cycle writes through: holds a small response's head for its body.

    uvicorn's `RequestResponseCycle` uses only `write`, `close` and `is_closing`
    of its transport. The head of a response with a short declared length is
    kept until the next write (the body) and sent with it; `close` sends a held
    head first, so nothing written is ever lost or reordered.
    """

    __slots__ = ("_cycle", "_held", "_transport")

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        super().__init__()
        self._transport = transport
        self._cycle: RequestResponseCycle | None = cycle  # None once the head went by
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
            return
        cycle = self._cycle
        if cycle is not None and cycle.response_started:
            # uvicorn writes the head last thing in handling `http.response.start`,
            # so the first write after the response started is the head.
            self._cycle = None
            if (
                cycle.chunked_encoding is False
                and 0 < cycle.expected_content_length <= HELD_HEAD_MAX_BODY_BYTES
                and not cycle.response_complete
                and cycle.scope["method"] != "HEAD"  # a HEAD response writes no body
            ):
                self._held = bytes(data)
                return
        if data:
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            self._transport.write(held)


# What `_HeadHoldingTransport` reads of uvicorn's cycle. Should a uvicorn release rename
# any of it, responses go out unheld (two writes) rather than fail.
_CYCLE_FIELDS = (
    "response_started",
    "chunked_encoding",
    "expected_content_length",
    "response_complete",
    "scope",
    "transport",
)
_holdable: dict[type, bool] = {}


def _can_hold(cycle: object) -> bool:
    kind = type(cycle)
    able = _holdable.get(kind)
    if able is None:
        able = _holdable[kind] = all(hasattr(cycle, f) for f in _CYCLE_FIELDS)
    return able


def _rejection(status: int, reason: str, kind: str, message: str) -> bytes:
    body = orjson.dumps({"error": {"type": kind, "message": message}})
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode()
    return head + body


class _HeaderDeadlines:
    """The connections of one event loop, checked periodically for slow headers.

    It holds no reference to its loop (it is the value of a weak mapping keyed by it).
    """

    def __init__(self) -> None:
        self._connections: set[LimitedHttpToolsProtocol] = set()
        self._check: asyncio.TimerHandle | None = None
        self._interval_s = 1.0

    def add(self, connection: LimitedHttpToolsProtocol) -> None:
        self._connections.add(connection)
        self._interval_s = min(self._interval_s, connection.header_read_timeout_s / 10)
        if self._check is None:
            self._check = connection.loop.call_later(self._interval_s, self._run, connection.loop)

    def discard(self, connection: LimitedHttpToolsProtocol) -> None:
        self._connections.discard(connection)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        self._check = None
        now = loop.time()
        for connection in list(self._connections):
            started = connection.headers_started_at
            if started is not None and now - started >= connection.header_read_timeout_s:
                connection.too_slow()
        if self._connections:
            self._check = loop.call_later(self._interval_s, self._run, loop)


# Per event loop, not per server: uvicorn builds each protocol itself, handing it
# nothing shared that the gateway owns. Weak, so a closed loop takes its entry along.
_deadlines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _HeaderDeadlines] = (
    weakref.WeakKeyDictionary()
)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    max_header_bytes = 16 * 1024
    header_read_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_bytes = 0
        # Loop time when reading the current request's headers began; None between requests.
        self.headers_started_at: float | None = None
        self._rejected = False
        deadlines = _deadlines.get(self.loop)
        if deadlines is None:
            deadlines = _deadlines[self.loop] = _HeaderDeadlines()
        self._deadlines = deadlines

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.headers_started_at = self.loop.time()
        self._deadlines.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadlines.discard(self)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        if self.headers_started_at is None:
            self.headers_started_at = self.loop.time()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.headers_started_at = None
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not previous and cycle is not None and _can_hold(cycle):
            cycle.transport = _HeadHoldingTransport(self.transport, cycle)

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

    def too_slow(self) -> None:
        """Close the connection: its headers took longer than `header_read_timeout_s`."""
        self.headers_started_at = None
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
