"""DNS discovery with a fake resolver, and capabilities learned from replicas."""

from __future__ import annotations

from typing import Any

from backends.clock import ManualClock
from gateway.discovery import Discovery, replica_url, split_host_port
from gateway.pools import PoolRegistry
from gateway.settings import settings_from_dict

DNS_POOL = {
    "name": "inf2",
    "accelerator": "inf2.xlarge",
    "price_per_hour": 0.7582,
    "dns": "sd-inf2.default.svc.cluster.local:8000",
}


class FakeResolver:
    def __init__(self, answers: list[list[str]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def __call__(self, target: str) -> list[str]:
        self.calls.append(target)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if answer == ["fail"]:
            raise OSError("NXDOMAIN")
        return [replica_url(ip, 8000) for ip in answer]


def rig(
    answers: list[list[str]], **overrides: Any
) -> tuple[PoolRegistry, Discovery, FakeResolver, ManualClock]:
    clock = ManualClock(100.0)
    settings = settings_from_dict({"pools": [DNS_POOL], "slow_start_s": 10.0} | overrides)
    registry = PoolRegistry(settings, clock)
    resolver = FakeResolver(answers)
    return registry, Discovery(registry, settings, clock, resolver=resolver), resolver, clock


def test_host_port_parsing_and_urls() -> None:
    assert split_host_port("sd.svc:8000") == ("sd.svc", 8000)
    assert split_host_port("[::1]:9000") == ("::1", 9000)
    assert replica_url("fd00::5", 8000) == "http://[fd00::5]:8000"


async def test_resolves_adds_with_slow_start_and_retires_vanished_replicas() -> None:
    registry, discovery, resolver, clock = rig(
        [["10.0.0.1", "10.0.0.2"], ["10.0.0.2", "10.0.0.3"], ["10.0.0.3"]]
    )
    await discovery.refresh()
    pool = registry.get("inf2")
    assert sorted(pool.replicas) == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    assert resolver.calls == ["sd-inf2.default.svc.cluster.local:8000"]
    # the first set starts at full weight
    assert all(r.slow_start_factor(clock.now(), 10.0) == 1.0 for r in pool.replicas.values())

    gone = pool.replicas["http://10.0.0.1:8000"]
    gone.in_flight = 1  # a request is still running there
    clock.advance(10)
    await discovery.refresh()
    new = pool.replicas["http://10.0.0.3:8000"]
    assert new.slow_start_factor(clock.now(), 10.0) < 0.2  # a new replica warms up
    assert gone.retiring and not gone.healthy(clock.now())
    snap = registry.snapshot()
    urls = {r.url: r.healthy for r in snap.pools[0].replicas}
    assert urls["http://10.0.0.1:8000"] is False  # no new work for the vanished replica
    gone.in_flight = 0  # its request finished
    registry.snapshot()
    assert "http://10.0.0.1:8000" not in pool.replicas

    clock.advance(10)
    await discovery.refresh()
    assert sorted(pool.replicas) == ["http://10.0.0.3:8000"]


async def test_a_failed_lookup_keeps_the_last_replicas() -> None:
    registry, discovery, _, _ = rig([["10.0.0.1"], ["fail"]])
    await discovery.refresh()
    await discovery.refresh()
    assert list(registry.get("inf2").replicas) == ["http://10.0.0.1:8000"]


async def test_capabilities_drive_shapes_and_batch_unless_config_overrides() -> None:
    caps = {
        "http://10.0.0.1:8000": {"shapes": ["512x512"], "max_batch": 1},
        "http://10.0.0.2:8000": {"shapes": ["512x512", "768x768"], "max_batch": 4},
    }

    async def fetch(url: str, timeout_s: float) -> tuple[int, Any]:
        return 200, caps[url.removesuffix("/v1/capabilities")]

    registry, discovery, _, clock = rig([["10.0.0.1", "10.0.0.2"]])
    discovery.fetch = fetch
    await discovery.refresh()
    view = registry.snapshot().pools[0]
    assert view.shapes == frozenset({"512x512"})  # what every replica can run
    assert view.max_batch == 1
    assert view.supports("512x512") and not view.supports("768x768")
    assert not view.supports("512x512", n=2)

    settings = settings_from_dict({"pools": [DNS_POOL | {"shapes": ["768x768"]}]})
    overridden = PoolRegistry(settings, clock)
    d2 = Discovery(overridden, settings, clock, resolver=FakeResolver([["10.0.0.1"]]), fetch=fetch)
    await d2.refresh()
    assert overridden.snapshot().pools[0].shapes == frozenset({"768x768"})


async def test_unreachable_capabilities_are_tried_again() -> None:
    calls: list[str] = []

    async def flaky(url: str, timeout_s: float) -> tuple[int, Any]:
        calls.append(url)
        if len(calls) == 1:
            raise OSError("refused")
        return 200, {"shapes": None, "max_batch": 4}

    registry, discovery, _, _ = rig([["10.0.0.1"]])
    discovery.fetch = flaky
    await discovery.refresh()
    assert registry.get("inf2").replicas["http://10.0.0.1:8000"].capabilities is None
    await discovery.learn_capabilities()
    assert registry.snapshot().pools[0].max_batch == 4
    assert registry.snapshot().pools[0].shapes is None
