"""Simulated model servers inside the current event loop, on loopback sockets.

For tests, the embedded demo and the load tools: each server is a real HTTP
server on 127.0.0.1 with a real port, sharing the caller's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from backends.clock import Clock
from backends.factory import build_engine
from backends.server import create_app
from backends.serving import RunningServer, running_server
from backends.settings import ServerSettings

# Defaults that suit tests and demos: no cold start, fault injection on.
LOCAL_DEFAULTS: dict[str, Any] = {"cold_start_s": 0.0, "enable_fault_injection": True}


@contextlib.asynccontextmanager
async def start_backend(
    *,
    clock: Clock | None = None,
    wait_ready: bool = True,
    ready_timeout_s: float = 10.0,
    **options: Any,
) -> AsyncIterator[RunningServer]:
    """A model server with the given `ServerSettings` fields, on a free loopback port."""
    settings = ServerSettings(**(LOCAL_DEFAULTS | options))
    built = build_engine(settings, clock=clock)
    app = create_app(
        built.engine,
        settings,
        slots=built.slots,
        prior_service_s=built.prior_service_s,
        clock=clock,
    )
    async with running_server(app, on_drain=app.state.runtime.drain) as server:
        if wait_ready:
            runtime = app.state.runtime
            async with asyncio.timeout(ready_timeout_s):
                while not runtime.readiness()[0]:
                    await asyncio.sleep(0.005)
        yield server
