"""Small scenarios for the simulator tests, as fixtures (test modules cannot import siblings)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from loadtest.sim.scenario import Scenario, parse_scenario

SCENARIOS_DIR = Path(__file__).resolve().parents[3] / "loadtest" / "scenarios"

ScenarioBuilder = Callable[..., Scenario]


def _small(**overrides: Any) -> dict[str, Any]:
    """Three pools of the paper's profiles, 4 requests/s, a fault of every kind."""
    data: dict[str, Any] = {
        "name": "small",
        "duration_s": 600,
        "seed": 11,
        "arrivals": {
            "rate": {"kind": "constant", "per_s": 4.0},
            "batch_share": 0.25,
            "shapes": [{"shape": "512x512", "share": 0.8}, {"shape": "768x768", "share": 0.2}],
        },
        "pools": [
            {
                "name": "inf2",
                "profile": "inf2",
                "replicas": {"initial": 3, "min": 1, "max": 8},
                "cold_start_s": 60,
            },
            {
                "name": "g5",
                "profile": "g5-triton",
                "replicas": {"initial": 2, "min": 1, "max": 8},
                "cold_start_s": 45,
            },
            {
                "name": "g6",
                "profile": "g6",
                "replicas": {"initial": 1, "min": 1, "max": 8},
                "cold_start_s": 45,
            },
        ],
        "events": [
            {"at_s": 120, "kind": "lose_replicas", "pool": "inf2", "count": 2},
            {"at_s": 200, "kind": "capacity_errors", "pool": "g6"},
            {"at_s": 260, "kind": "recover", "pool": "g6"},
            {"at_s": 300, "kind": "max_replicas", "pool": "inf2", "max_replicas": 1},
            {"at_s": 400, "kind": "recover", "pool": "inf2"},
            {"at_s": 420, "kind": "slowdown", "pool": "g5", "factor": 3.0},
            {"at_s": 480, "kind": "recover", "pool": "g5"},
            {"at_s": 500, "kind": "price", "pool": "g6", "price_per_hour": 0.2},
        ],
    }
    return data | overrides


@pytest.fixture
def small_data() -> dict[str, Any]:
    return _small()


@pytest.fixture
def small_scenario() -> ScenarioBuilder:
    """`small_scenario(duration_s=300)`: the small scenario with top-level overrides."""

    def build(**overrides: Any) -> Scenario:
        return parse_scenario(_small(**overrides))

    return build


@pytest.fixture
def scenarios_dir() -> Path:
    return SCENARIOS_DIR
