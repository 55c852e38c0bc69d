"""Settings of one model server (built from the `sd-backend serve` flags)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

EngineName = Literal["sim", "diffusers", "neuron"]
DeviceName = Literal["auto", "cuda", "cpu"]
DtypeName = Literal["auto", "float16", "bfloat16", "float32"]


class ServerSettings(BaseModel):
    """Every bound and delay of a model server, with units in the names."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: EngineName = "sim"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    profile: str | None = None  # None: the engine's default (see `factory.default_profile`)
    slots: int | None = Field(default=None, ge=1, le=256)  # None: the profile's
    max_queue: int = Field(default=8, ge=0, le=100_000)  # waiting room beyond the slots
    model: str | None = None
    # Real engines. `auto` device: cuda when torch sees a GPU, else cpu; `auto` dtype:
    # float16 on cuda, float32 on cpu. `scheduler` None keeps the pipeline's own.
    device: DeviceName = "auto"
    dtype: DtypeName = "auto"
    scheduler: str | None = None
    max_batch: int | None = Field(default=None, ge=1, le=64)  # None: the profile's
    max_side_px: int = Field(default=1024, ge=64, le=2048)  # diffusers: largest width/height
    enable_fault_injection: bool = False
    latency_s: float | None = Field(default=None, gt=0)  # None: the profile's
    cold_start_s: float | None = Field(default=None, ge=0)  # None: the profile's
    seed: int = 0
    # After SIGTERM: how long to wait for accepted work before exiting anyway.
    drain_timeout_s: float = Field(default=60.0, ge=0)
    # After the work is done: how long to keep answering (readiness 503) before exiting.
    drain_delay_s: float = Field(default=0.0, ge=0)
