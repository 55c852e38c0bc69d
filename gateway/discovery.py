"""Where replicas are: static URLs from config, or DNS names (a Kubernetes headless Service).

A `dns: host:port` pool has one replica per address the name resolves to,
re-resolved every `discovery_interval_s`; replicas that stay keep their state.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from backends.clock import Clock
from gateway.pools import PoolRegistry, PoolState, ReplicaState
from gateway.settings import GatewaySettings

log = logging.getLogger("gateway.discovery")


def split_host_port(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


def replica_url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}"


async def resolve(target: str) -> list[str]:
    """Replica URLs for `host:port`, sorted, without duplicates."""
    host, port = split_host_port(target)
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return sorted({replica_url(str(info[4][0]), port) for info in infos})


Resolver = Callable[[str], Awaitable[list[str]]]
# GET a small JSON document: (status, body); raises on transport errors.
Fetcher = Callable[[str, float], Awaitable[tuple[int, Any]]]


class Discovery:
    """Keeps DNS-backed pools' replica sets current, and learns what each replica can run.

    `resolver` maps `host:port` to replica URLs (DNS by default; tests inject
    a fake). With a `fetch`, every new replica's `/v1/capabilities` is read,
    so the shape filter knows a Neuron replica compiled for 512x512 cannot
    take 768x768 (a pool's configured `shapes` still override).
    """

    def __init__(
        self,
        registry: PoolRegistry,
        settings: GatewaySettings,
        clock: Clock,
        *,
        resolver: Resolver = resolve,
        fetch: Fetcher | None = None,
    ) -> None:
        self.registry = registry
        self.clock = clock
        self.interval_s = settings.discovery_interval_s
        self.timeout_s = settings.probe_timeout_s
        self.resolver = resolver
        self.fetch = fetch

    async def learn_capabilities(self) -> None:
        """Read `/v1/capabilities` of every replica that has not answered it yet."""
        if self.fetch is None:
            return
        todo = [r for r in self.registry.replicas() if r.capabilities is None and not r.retiring]

        async def one(replica: ReplicaState) -> None:
            assert self.fetch is not None
            try:
                status, body = await self.fetch(replica.url + "/v1/capabilities", self.timeout_s)
            except Exception as exc:  # unreachable now: try again next round
                log.debug("capabilities of %s: %s", replica.url, exc)
                return
            if status == 200 and isinstance(body, dict):
                replica.capabilities = body
            elif status in (404, 405):
                replica.capabilities = {}  # a server without the endpoint: nothing to learn

        await asyncio.gather(*(one(r) for r in todo))

    def _dns_pools(self) -> list[PoolState]:
        return [p for p in self.registry if p.config.dns]

    async def refresh(self) -> None:
        """Resolve every DNS pool once; a failed lookup keeps the last known replicas."""
        for pool in self._dns_pools():
            assert pool.config.dns is not None
            try:
                urls = await self.resolver(pool.config.dns)
            except (OSError, ValueError) as exc:
                log.warning("pool %s: cannot resolve %s: %s", pool.name, pool.config.dns, exc)
                continue
            if set(urls) != set(pool.replicas):
                log.info("pool %s: replicas %s", pool.name, ", ".join(urls) or "none")
            pool.set_replicas(urls, self.clock.now())
        await self.learn_capabilities()

    async def run(self) -> None:
        """Re-resolve and re-learn every `discovery_interval_s` until cancelled."""
        while True:
            await self.clock.sleep(self.interval_s)
            try:
                await self.refresh()
            except Exception:
                log.exception("discovery round failed")
