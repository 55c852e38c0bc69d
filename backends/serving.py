"""Running ASGI apps under uvicorn: graceful drain on SIGTERM, and in-process servers.

`GracefulServer` turns the first SIGTERM/SIGINT into a drain (the app's
`on_drain` coroutine runs while the port stays open), then exits; a second
signal exits at once. `running_server` starts an app on a loopback socket
inside the current event loop, for tests and the embedded demo.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any, TypeVar

import uvicorn

log = logging.getLogger("backends.serving")

DrainHook = Callable[[], Awaitable[None]]
T = TypeVar("T")


class GracefulServer(uvicorn.Server):
    """A uvicorn server whose first exit signal drains before stopping."""

    def __init__(self, config: uvicorn.Config, on_drain: DrainHook | None = None) -> None:
        super().__init__(config)
        self.on_drain = on_drain
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.on_drain is None or self._drain_task is not None or self._loop is None:
            super().handle_exit(sig, frame)
            return
        log.info("signal %d: draining before exit (send again to exit now)", sig)
        self._loop.call_soon_threadsafe(self.start_drain)

    def start_drain(self) -> None:
        """Begin the drain; the server exits when `on_drain` returns."""
        if self._drain_task is None and self.on_drain is not None:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain(self.on_drain))

    async def _drain(self, hook: DrainHook) -> None:
        try:
            await hook()
        finally:
            self.should_exit = True


class QuietServer(GracefulServer):
    """Installs no signal handlers: the embedding program owns them."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket (port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when
    # the listening socket says it is TCP; without it every keep-alive response waits
    # for the client's delayed ACK (about 40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on uvloop when it is installed (as uvicorn would), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


@dataclass
class RunningServer:
    """A server started by `running_server`."""

    server: GracefulServer
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def uvicorn_config(app: Any, **overrides: Any) -> uvicorn.Config:
    """The project's uvicorn settings: httptools, no access log, lifespan on."""
    options: dict[str, Any] = {
        "http": "httptools",
        "lifespan": "on",
        "access_log": False,
        "log_level": "warning",
        "timeout_keep_alive": 75,
        "timeout_graceful_shutdown": 30,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


@contextlib.asynccontextmanager
async def running_server(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    on_drain: DrainHook | None = None,
    startup_timeout_s: float = 10.0,
    **config: Any,
) -> AsyncIterator[RunningServer]:
    """Serve `app` on `host:port` in this event loop until the block exits."""
    sock = bind_socket(host, port)
    server = QuietServer(uvicorn_config(app, **config), on_drain=on_drain)
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"uvicorn:{sock.getsockname()}")
    try:
        async with asyncio.timeout(startup_timeout_s):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("server stopped during startup")
                await asyncio.sleep(0.005)
        yield RunningServer(server, host, sock.getsockname()[1])
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()
