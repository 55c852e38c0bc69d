"""A simulated accelerator: realistic service times, real PNGs, no model.

Service time follows the accelerator profile: the reference latency scaled by
steps (a fixed share plus a per-step share), by image area and by batch size,
with lognormal noise of the profile's coefficient of variation, from a seeded
generator. It drives tests, the demo and the compose stack without hardware.
"""

from __future__ import annotations

import asyncio
import math
import random

from backends.clock import Clock, MonotonicClock
from backends.engines.base import Capabilities, GenerationRequest, GenerationResult
from backends.png import render_preview
from backends.profiles import AcceleratorProfile


def mean_service_time_s(profile: AcceleratorProfile, request: GenerationRequest) -> float:
    """Expected seconds to produce `request` on one slot of `profile`."""
    steps = request.steps if request.steps is not None else profile.reference_steps
    step_factor = profile.fixed_fraction + (1.0 - profile.fixed_fraction) * (
        steps / profile.reference_steps
    )
    area_factor = (request.width * request.height) / (
        profile.reference_width * profile.reference_height
    )
    return profile.latency_s * step_factor * area_factor * request.n


def sample_service_time_s(
    profile: AcceleratorProfile, request: GenerationRequest, rng: random.Random
) -> float:
    """One lognormal draw whose mean is `mean_service_time_s` and CV the profile's."""
    mean = mean_service_time_s(profile, request)
    if profile.latency_cv <= 0 or mean <= 0:
        return mean
    sigma = math.sqrt(math.log1p(profile.latency_cv**2))
    mu = math.log(mean) - sigma**2 / 2
    return rng.lognormvariate(mu, sigma)


class SimulatedEngine:
    """An `Engine` that sleeps for a sampled service time on an injected clock."""

    name = "sim"

    def __init__(
        self,
        profile: AcceleratorProfile,
        *,
        clock: Clock | None = None,
        seed: int = 0,
    ) -> None:
        self.profile = profile
        self._clock = clock or MonotonicClock()
        self._rng = random.Random(seed)

    async def load(self) -> None:
        await self._clock.sleep(self.profile.cold_start_s)

    def capabilities(self) -> Capabilities:
        p = self.profile
        return Capabilities(
            engine=self.name,
            accelerator=p.accelerator,
            shapes=p.shapes,
            max_batch=p.max_batch,
            default_steps=p.reference_steps,
            expected_latency_s=p.latency_s,
            price_per_hour_usd=p.price_per_hour_usd,
            extra={"profile": p.name, "simulates": p.engine_kind},
        )

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        self.capabilities().check(request)
        seed = request.seed if request.seed is not None else self._rng.getrandbits(32)
        seconds = sample_service_time_s(self.profile, request, self._rng)
        await self._clock.sleep(seconds)
        images = await asyncio.to_thread(self._render, request, seed)
        return GenerationResult(images_png=images, inference_seconds=seconds, seed=seed)

    @staticmethod
    def _render(request: GenerationRequest, seed: int) -> tuple[bytes, ...]:
        return tuple(
            render_preview(request.prompt, seed + i, request.width, request.height)
            for i in range(request.n)
        )

    async def close(self) -> None:
        return None
