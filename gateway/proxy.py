"""The one seam between the gateway and its backends.

`Transport` is the small interface the router talks to; `AiohttpTransport` is
the real one (one shared `aiohttp.ClientSession` per worker, keep-alive, a
bounded connector, redirects never followed, bodies streamed). Tests may
inject another `Transport`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson
from aiohttp import hdrs

# Hop-by-hop headers (RFC 9110 7.6.1) never cross the gateway, in either direction.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
    }
)
# Backend response headers passed on to the client; everything else stays inside.
PASS_RESPONSE_HEADERS = ("content-type", "content-length", "x-inference-seconds")
CHUNK_BYTES = 64 * 1024


class ConnectError(Exception):
    """The backend could not be reached (refused, reset before a response, unresolvable)."""


class UpstreamTimeout(Exception):
    """No response (status line and headers) within the read timeout."""


class UpstreamResponse(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


class Transport(Protocol):
    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], read_timeout_s: float
    ) -> UpstreamResponse:
        """Send a POST; returns once the status line and headers arrived.

        Raises ConnectError or UpstreamTimeout. The caller must `close()` the
        response (after streaming or reading its body).
        """
        ...

    async def get_json(self, url: str, timeout_s: float) -> tuple[int, Any]:
        """GET a small JSON document; returns (status, parsed body or None)."""
        ...

    async def close(self) -> None: ...


@dataclass
class _AiohttpResponse:
    _resp: aiohttp.ClientResponse

    @property
    def status(self) -> int:
        return self._resp.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._resp.headers

    async def read(self) -> bytes:
        return await self._resp.read()

    def chunks(self) -> AsyncIterator[bytes]:
        return self._resp.content.iter_chunked(CHUNK_BYTES)

    def close(self) -> None:
        self._resp.release()


class _Request(aiohttp.ClientRequest):
    """aiohttp's request, without its defaults that a gateway must not send.

    Of aiohttp's automatic headers only `Accept: */*` (when the caller sets no
    Accept) remains: no `User-Agent`, and no `Accept-Encoding`, because bodies
    pass through untouched and a backend must not compress them behind the
    client's back. The same as `skip_auto_headers=("User-Agent",
    "Accept-Encoding")`, which copies the headers twice per request.
    """

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        if hdrs.ACCEPT not in self.headers:
            self.headers[hdrs.ACCEPT] = "*/*"


class AiohttpTransport:
    """The production transport. Create inside a running event loop."""

    def __init__(
        self,
        *,
        connect_timeout_s: float = 2.0,
        max_connections: int = 1024,
        max_connections_per_host: int = 64,
        keepalive_timeout_s: float = 30.0,
    ) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}  # by read timeout; immutable
        connector = aiohttp.TCPConnector(
            limit=max_connections,
            limit_per_host=max_connections_per_host,
            keepalive_timeout=keepalive_timeout_s,
            ttl_dns_cache=10,
            enable_cleanup_closed=True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            request_class=_Request,
            json_serialize=lambda o: orjson.dumps(o).decode(),
        )

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], read_timeout_s: float
    ) -> UpstreamResponse:
        timeout = self._timeouts.get(read_timeout_s)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(
                total=None, connect=self._connect_timeout_s, sock_read=read_timeout_s
            )
            if len(self._timeouts) < 64:  # one per configured read timeout in practice
                self._timeouts[read_timeout_s] = timeout
        try:
            resp = await self._session.post(
                url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            )
        except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
            if isinstance(exc, aiohttp.ConnectionTimeoutError):
                raise ConnectError(f"connect timeout: {url}") from exc
            raise UpstreamTimeout(f"no response within {read_timeout_s:g} s") from exc
        except aiohttp.ClientError as exc:
            raise ConnectError(f"{type(exc).__name__}") from exc
        return _AiohttpResponse(resp)

    async def get_json(self, url: str, timeout_s: float) -> tuple[int, Any]:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with self._session.get(url, timeout=timeout, allow_redirects=False) as resp:
            raw = await resp.read()
        try:
            return resp.status, orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            return resp.status, None

    async def close(self) -> None:
        await self._session.close()


def response_headers(upstream: Mapping[str, str]) -> dict[str, str]:
    """The backend response headers the client may see."""
    return {k: upstream[k] for k in PASS_RESPONSE_HEADERS if k in upstream}
