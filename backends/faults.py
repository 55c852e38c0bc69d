"""Injected faults of a model server (only with `--enable-fault-injection`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Faults(BaseModel):
    """The faults in force. Defaults mean a healthy server.

    - `unavailable`: readiness and image requests answer 503.
    - `capacity_error`: image requests answer 429 "insufficient capacity".
    - `latency_multiplier`: service time is stretched by this factor (>= 1).
    - `error_rate`: this share of image requests fail with 500.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    unavailable: bool = False
    capacity_error: bool = False
    latency_multiplier: float = Field(default=1.0, ge=1.0, le=1000.0)
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)

    @property
    def active(self) -> bool:
        return self != Faults()
