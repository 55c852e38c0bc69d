"""Shared fixtures: simulated model servers on real loopback sockets."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import pytest

from backends.local import start_backend
from backends.serving import RunningServer

BackendFactory = Callable[..., contextlib.AbstractAsyncContextManager[RunningServer]]


@pytest.fixture
def backend() -> BackendFactory:
    """`async with backend(profile="g6", slots=2) as server: ...` (latency 0.05 s unless given)."""
    return functools.partial(start_backend, latency_s=0.05)
