"""Where replicas are: static URLs from config, or DNS names (a Kubernetes headless Service).

A `dns: host:port` pool has one replica per address the name resolves to,
re-resolved every `discovery_interval_s`; replicas that stay keep their state.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from backends.clock import Clock
from gateway.pools import PoolRegistry, PoolState
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


class Discovery:
    """Keeps DNS-backed pools' replica sets current."""

    def __init__(self, registry: PoolRegistry, settings: GatewaySettings, clock: Clock) -> None:
        self.registry = registry
        self.clock = clock
        self.interval_s = settings.discovery_interval_s

    def _dns_pools(self) -> list[PoolState]:
        return [p for p in self.registry if p.config.dns]

    async def refresh(self) -> None:
        """Resolve every DNS pool once; a failed lookup keeps the last known replicas."""
        for pool in self._dns_pools():
            assert pool.config.dns is not None
            try:
                urls = await resolve(pool.config.dns)
            except (OSError, ValueError) as exc:
                log.warning("pool %s: cannot resolve %s: %s", pool.name, pool.config.dns, exc)
                continue
            if set(urls) != set(pool.replicas):
                log.info("pool %s: replicas %s", pool.name, ", ".join(urls) or "none")
            pool.set_replicas(urls, self.clock.now())

    async def run(self) -> None:
        if not self._dns_pools():
            return
        while True:
            await self.clock.sleep(self.interval_s)
            await self.refresh()
