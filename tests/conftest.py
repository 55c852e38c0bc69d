"""Shared fixtures: simulated model servers on real loopback sockets."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from backends.clock import Clock
from backends.factory import build_engine
from backends.server import create_app
from backends.serving import RunningServer, running_server
from backends.settings import ServerSettings

BackendFactory = Callable[..., contextlib.AbstractAsyncContextManager[RunningServer]]


@contextlib.asynccontextmanager
async def start_backend(
    *, clock: Clock | None = None, wait_ready: bool = True, **options: Any
) -> AsyncIterator[RunningServer]:
    """A simulated model server on 127.0.0.1 with the given `ServerSettings` fields.

    Defaults suit tests: no cold start, fault injection on, a short latency.
    """
    defaults: dict[str, Any] = {
        "cold_start_s": 0.0,
        "latency_s": 0.05,
        "enable_fault_injection": True,
    }
    settings = ServerSettings(**(defaults | options))
    built = build_engine(settings, clock=clock)
    app = create_app(
        built.engine,
        settings,
        slots=built.slots,
        prior_service_s=built.prior_service_s,
        clock=clock,
    )
    async with running_server(app) as server:
        if wait_ready:
            runtime = app.state.runtime
            for _ in range(1000):
                if runtime.readiness()[0]:
                    break
                await _yield()
        yield server


async def _yield() -> None:
    import asyncio

    await asyncio.sleep(0.005)


@pytest.fixture
def backend() -> BackendFactory:
    """`async with backend(profile="g6", slots=2) as server: ...`"""
    return start_backend
