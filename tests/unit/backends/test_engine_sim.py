"""Accelerator profiles and the simulated engine's service-time model."""

from __future__ import annotations

import asyncio
import random
import statistics

import pytest

from backends.clock import ManualClock
from backends.engines.base import GenerationRequest, UnsupportedRequestError
from backends.engines.simulated import (
    SimulatedEngine,
    mean_service_time_s,
    sample_service_time_s,
)
from backends.png import decode_size
from backends.profiles import PROFILES, get_profile

REQUIRED = ["inf2", "trn1", "g5-cuda", "g5-triton", "g6", "cpu"]


@pytest.mark.parametrize(
    ("name", "price", "latency"),
    [
        ("inf2", 0.7582, 0.67),
        ("trn1", 1.3438, 0.51),
        ("g5-triton", 1.006, 0.68),
        ("g5-cuda", 1.006, 0.92),
        ("g6", 0.8048, 0.96),
    ],
    ids=lambda v: str(v),
)
def test_profiles_carry_the_papers_figures(name: str, price: float, latency: float) -> None:
    p = get_profile(name)
    assert p.price_per_hour_usd == price
    assert p.latency_s == latency


def test_every_required_profile_is_consistent() -> None:
    for name in REQUIRED:
        p = PROFILES[name]
        assert p.slots >= 1 and p.max_batch >= 1 and p.latency_s > 0
        # slots x (60 / latency) must not claim more than the measured max rate by > 50%
        assert p.slots * 60 / p.latency_s <= p.max_images_per_min * 1.5, name


def test_neuron_profiles_are_compiled_for_fixed_shapes() -> None:
    assert get_profile("inf2").shapes == ("512x512",)
    assert get_profile("g6").shapes is None


def test_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match=r"known: .*inf2"):
        get_profile("tpu")


@pytest.mark.parametrize(
    ("request_", "factor"),
    [
        (GenerationRequest("x"), 1.0),
        (GenerationRequest("x", steps=20), 0.15 + 0.85 * 2),
        (GenerationRequest("x", width=1024, height=1024), 4.0),
        (GenerationRequest("x", n=3), 3.0),
    ],
    ids=["reference", "double-steps", "four-times-area", "batch-of-three"],
)
def test_mean_service_time_scales_with_steps_area_and_batch(
    request_: GenerationRequest, factor: float
) -> None:
    p = get_profile("g6")
    assert mean_service_time_s(p, request_) == pytest.approx(p.latency_s * factor)


def test_service_time_is_lognormal_around_the_profile_mean() -> None:
    p = get_profile("inf2")
    rng = random.Random(7)
    draws = [sample_service_time_s(p, GenerationRequest("x"), rng) for _ in range(20_000)]
    assert statistics.fmean(draws) == pytest.approx(p.latency_s, rel=0.01)
    cv = statistics.stdev(draws) / statistics.fmean(draws)
    assert cv == pytest.approx(p.latency_cv, rel=0.05)
    assert min(draws) > 0


def test_same_seed_same_service_times() -> None:
    p = get_profile("g5-cuda")
    a = [sample_service_time_s(p, GenerationRequest("x"), random.Random(1)) for _ in range(3)]
    b = [sample_service_time_s(p, GenerationRequest("x"), random.Random(1)) for _ in range(3)]
    assert a == b


async def test_cold_start_holds_load_until_the_clock_passes_it() -> None:
    clock = ManualClock()
    engine = SimulatedEngine(get_profile("inf2").with_overrides(cold_start_s=30.0), clock=clock)
    load = asyncio.create_task(engine.load())
    await clock.run_for(29.0, step=1.0)
    assert not load.done()
    await clock.run_for(1.0, step=1.0)
    await load


async def test_generate_takes_the_sampled_time_and_returns_decodable_pngs() -> None:
    clock = ManualClock()
    engine = SimulatedEngine(get_profile("g6"), clock=clock, seed=3)
    task = asyncio.create_task(engine.generate(GenerationRequest("a red fox", n=2, seed=11)))
    await clock.run_for(5.0, step=0.01)
    result = await task
    assert result.seed == 11
    assert 0.5 < result.inference_seconds < 2.0
    assert len(result.images_png) == 2
    assert decode_size(result.images_png[0]) == (64, 64)
    assert result.images_png[0] != result.images_png[1]


async def test_images_are_deterministic_in_prompt_and_seed() -> None:
    engine = SimulatedEngine(get_profile("g6").with_overrides(latency_s=0.001))
    a = await engine.generate(GenerationRequest("a cat", seed=5))
    b = await engine.generate(GenerationRequest("a cat", seed=5))
    c = await engine.generate(GenerationRequest("a dog", seed=5))
    assert a.images_png == b.images_png
    assert a.images_png != c.images_png


async def test_neuron_profile_refuses_shapes_it_was_not_compiled_for() -> None:
    engine = SimulatedEngine(get_profile("inf2"))
    with pytest.raises(UnsupportedRequestError, match="supported shapes: 512x512"):
        await engine.generate(GenerationRequest("x", width=768, height=768))
    with pytest.raises(UnsupportedRequestError, match="maximum batch of 1"):
        await engine.generate(GenerationRequest("x", n=2))
