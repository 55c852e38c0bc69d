"""The arrival process of a scenario, drawn once and replayed to every policy.

A non-homogeneous Poisson process by thinning: candidates at the curve's peak
rate, each kept with probability rate(t) / peak. Class and shape are drawn
from the same seeded stream, so every policy sees exactly the same requests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from loadtest.sim.scenario import Scenario


@dataclass(frozen=True, slots=True)
class Arrival:
    t_s: float
    batch: bool
    shape: int  # index into scenario.arrivals.shapes
    n: int  # images requested


def generate_arrivals(
    scenario: Scenario, seed: int, duration_s: float | None = None
) -> list[Arrival]:
    """Every arrival in [0, duration) in time order; the same list for the same seed."""
    spec = scenario.arrivals
    horizon = scenario.duration_s if duration_s is None else duration_s
    rng = random.Random(f"arrivals:{spec.seed if spec.seed is not None else seed}")
    peak = spec.rate.peak()
    if peak <= 0:
        return []
    cumulative = []
    total = 0.0
    for s in spec.shapes:
        total += s.share
        cumulative.append(total)
    arrivals: list[Arrival] = []
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= horizon:
            return arrivals
        if rng.random() * peak > spec.rate.at(t):
            continue
        batch = rng.random() < spec.batch_share
        pick = rng.random() * total
        shape = next(i for i, c in enumerate(cumulative) if pick < c or i == len(cumulative) - 1)
        arrivals.append(Arrival(t, batch, shape, spec.images_per_request))
