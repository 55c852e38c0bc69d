"""Simulation scenarios: a YAML file validated into frozen pydantic models.

A scenario names its pools (the gateway's pool config plus a service-time
model and autoscaling bounds), the arrival process (a rate curve, a class and
shape mix), timed events (replica losses, capacity shortfalls, capacity
errors, slowdowns, recoveries, price changes), the SLOs and the duration.
`load_scenario` raises `ScenarioError` whose problems each name the offending
field path, e.g. `pools.0.latency_s: Input should be greater than 0`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from backends.profiles import PROFILES, AcceleratorProfile
from gateway.settings import (
    ConfigError,
    GatewaySettings,
    SloSettings,
    read_yaml,
    settings_from_dict,
)

# Gateway settings the simulator sets itself, per run.
RESERVED_GATEWAY_KEYS = ("mode", "pools", "slo", "seed")
SIM_URL_PORT = 8000


class ScenarioError(ConfigError):
    """An invalid scenario: `source` names the file, `problems` each say 'field.path: reason'."""

    what = "scenario"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


# --- arrivals --------------------------------------------------------------------------------


class ConstantRate(_Model):
    kind: Literal["constant"]
    per_s: float = Field(ge=0)  # requests per second

    def at(self, t_s: float) -> float:
        return self.per_s

    def peak(self) -> float:
        return self.per_s


class RateStep(_Model):
    at_s: float = Field(ge=0)  # the new rate is reached at at_s + ramp_s
    per_s: float = Field(ge=0)
    ramp_s: float = Field(default=0.0, ge=0)  # linear ramp from the previous rate


class StepRate(_Model):
    """Piecewise constant with linear ramps; before the first step the first rate holds."""

    kind: Literal["steps"]
    steps: tuple[RateStep, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _sorted(self) -> StepRate:
        times = [s.at_s for s in self.steps]
        if times != sorted(times):
            raise ValueError("steps must be in increasing at_s order")
        return self

    def at(self, t_s: float) -> float:
        rate = self.steps[0].per_s
        for step in self.steps:
            if t_s < step.at_s:
                break
            if step.ramp_s > 0 and t_s < step.at_s + step.ramp_s:
                return rate + (step.per_s - rate) * (t_s - step.at_s) / step.ramp_s
            rate = step.per_s
        return rate

    def peak(self) -> float:
        return max(s.per_s for s in self.steps)


class DiurnalRate(_Model):
    """A day as a raised cosine: `peak_per_s` at `peak_at_s`, `trough_per_s` half a period off."""

    kind: Literal["diurnal"]
    trough_per_s: float = Field(ge=0)
    peak_per_s: float = Field(ge=0)
    period_s: float = Field(gt=0)
    peak_at_s: float = Field(ge=0)

    @model_validator(mode="after")
    def _peak_above_trough(self) -> DiurnalRate:
        if self.peak_per_s < self.trough_per_s:
            raise ValueError("peak_per_s must be at least trough_per_s")
        return self

    def at(self, t_s: float) -> float:
        phase = 2.0 * math.pi * (t_s - self.peak_at_s) / self.period_s
        return self.trough_per_s + (self.peak_per_s - self.trough_per_s) * (1 + math.cos(phase)) / 2

    def peak(self) -> float:
        return self.peak_per_s


RateCurve = Annotated[ConstantRate | StepRate | DiurnalRate, Field(discriminator="kind")]


class ShapeShare(_Model):
    shape: str = Field(pattern=r"^[1-9][0-9]*x[1-9][0-9]*$")  # 'WxH'
    share: float = Field(gt=0)

    @property
    def size(self) -> tuple[int, int]:
        width, _, height = self.shape.partition("x")
        return int(width), int(height)


class Arrivals(_Model):
    rate: RateCurve
    batch_share: float = Field(default=0.0, ge=0, le=1)  # share of requests in the batch class
    shapes: tuple[ShapeShare, ...] = (ShapeShare(shape="512x512", share=1.0),)
    images_per_request: int = Field(default=1, ge=1, le=8)  # n
    seed: int | None = None  # None: the scenario's seed

    def mean_area_factor(self) -> float:
        """Mean of width*height / 512^2 over the shape mix."""
        total = math.fsum(s.share for s in self.shapes)
        return math.fsum(s.share * s.size[0] * s.size[1] / 512**2 for s in self.shapes) / total


# --- pools -----------------------------------------------------------------------------------


class ReplicaBounds(_Model):
    initial: int = Field(ge=0)
    min: int = Field(default=1, ge=0)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> ReplicaBounds:
        if not self.min <= self.initial <= self.max:
            raise ValueError(
                f"need min <= initial <= max, got {self.min}, {self.initial}, {self.max}"
            )
        return self


class PoolSpec(_Model):
    """One pool: its gateway config, service-time model, autoscaling bounds and ALB weight.

    `profile` names an accelerator profile of `backends/profiles.py` whose
    accelerator, price, latency, latency CV and shapes fill the fields left out.
    """

    name: str = Field(pattern=r"^[a-z0-9_-]{1,63}$")
    profile: str | None = None
    accelerator: str = Field(min_length=1)
    price_per_hour: float = Field(ge=0)  # USD per replica-hour
    latency_s: float = Field(gt=0)  # mean service time of one 512x512 image at reference steps
    latency_cv: float = Field(default=0.08, ge=0)  # coefficient of variation (lognormal)
    service: Literal["lognormal", "exponential", "deterministic"] = "lognormal"
    slots: int = Field(default=1, ge=1)  # images a replica serves at once
    max_queue: int = Field(default=8, ge=0)  # waiting room per replica; beyond it: 429
    shapes: tuple[str, ...] | None = None  # None: any shape
    replicas: ReplicaBounds
    cold_start_s: float = Field(default=90.0, ge=0)  # node provisioning + model load
    alb_weight: float | None = Field(default=None, ge=0)  # static_alb's cost-mode weight
    max_share: float | None = Field(default=None, gt=0, le=1)  # the gateway's hedge, if any

    @model_validator(mode="before")
    @classmethod
    def _from_profile(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or data.get("profile") is None:
            return data
        name = data["profile"]
        profile: AcceleratorProfile | None = PROFILES.get(name) if isinstance(name, str) else None
        if profile is None:
            raise ValueError(f"profile: unknown {name!r}; known: {', '.join(sorted(PROFILES))}")
        defaults: dict[str, Any] = {
            "accelerator": profile.accelerator,
            "price_per_hour": profile.price_per_hour_usd,
            "latency_s": profile.latency_s,
            "latency_cv": profile.latency_cv,
            "shapes": profile.shapes,
        }
        return defaults | dict(data)

    def accelerator_profile(self) -> AcceleratorProfile:
        """The profile `sample_service_time_s` draws from (reference 512x512, 10 steps)."""
        return AcceleratorProfile(
            name=self.name,
            accelerator=self.accelerator,
            engine_kind="sim",
            price_per_hour_usd=self.price_per_hour,
            latency_s=self.latency_s,
            max_images_per_min=60.0 * self.slots / self.latency_s,
            slots=self.slots,
            latency_cv=self.latency_cv,
            cold_start_s=self.cold_start_s,
            shapes=self.shapes,
        )

    def supports(self, shape: str) -> bool:
        return self.shapes is None or shape in self.shapes


# --- events ----------------------------------------------------------------------------------


class _Event(_Model):
    at_s: float = Field(ge=0)
    pool: str


class LoseReplicas(_Event):
    """`count` ready replicas vanish (spot reclaim, node failure); their work fails over."""

    kind: Literal["lose_replicas"]
    count: int = Field(ge=1)


class MaxReplicas(_Event):
    """No more nodes to be had: the pool's maximum drops; with `evict`, replicas above it go."""

    kind: Literal["max_replicas"]
    max_replicas: int = Field(ge=0)
    evict: bool = True


class CapacityErrors(_Event):
    """Every replica of the pool answers 429 insufficient capacity until `recover`."""

    kind: Literal["capacity_errors"]


class Slowdown(_Event):
    """Service times of the pool are multiplied by `factor` until `recover`."""

    kind: Literal["slowdown"]
    factor: float = Field(gt=0)


class Recover(_Event):
    """Clears capacity errors and slowdown and restores the configured maximum."""

    kind: Literal["recover"]


class PriceChange(_Event):
    """A new price per replica-hour (a spot price move); billing and the gateway follow."""

    kind: Literal["price"]
    price_per_hour: float = Field(ge=0)


Event = Annotated[
    LoseReplicas | MaxReplicas | CapacityErrors | Slowdown | Recover | PriceChange,
    Field(discriminator="kind"),
]
FAULT_KINDS = ("lose_replicas", "max_replicas", "capacity_errors", "slowdown")


# --- the scenario ----------------------------------------------------------------------------


class AutoscalerSpec(_Model):
    """A KEDA/HPA-like scaler, the same for every policy."""

    period_s: float = Field(default=15.0, gt=0)  # HPA sync period
    target_utilization: float = Field(default=0.7, gt=0, le=1)  # outstanding work per slot
    metric_window_s: float = Field(default=30.0, gt=0)  # averaging window of the metric
    tolerance: float = Field(default=0.1, ge=0, lt=1)  # HPA: no change within +-10 %
    scale_down_cooldown_s: float = Field(default=180.0, ge=0)  # stabilization window


class Scenario(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,80}$")
    description: str = ""
    duration_s: float = Field(gt=0, le=7 * 24 * 3600)
    seed: int = 0
    slo: SloSettings = SloSettings()
    gateway: dict[str, Any] = Field(default_factory=dict)  # more GatewaySettings fields
    autoscaler: AutoscalerSpec = AutoscalerSpec()
    pools: tuple[PoolSpec, ...] = Field(min_length=1)
    arrivals: Arrivals
    events: tuple[Event, ...] = ()
    bucket_s: float = Field(default=10.0, gt=0)  # resolution of the time series
    oracle_bucket_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        names = [p.name for p in self.pools]
        if len(set(names)) != len(names):
            raise ValueError(f"pools: duplicate pool name in {names}")
        for i, event in enumerate(self.events):
            if event.pool not in names:
                raise ValueError(f"events.{i}.pool: unknown pool {event.pool!r}; pools: {names}")
        for i, share in enumerate(self.arrivals.shapes):
            if not any(p.supports(share.shape) for p in self.pools):
                raise ValueError(f"arrivals.shapes.{i}.shape: no pool serves {share.shape}")
        for key in self.gateway:
            if key in RESERVED_GATEWAY_KEYS:
                raise ValueError(f"gateway.{key}: set by the simulator, not the scenario")
        return self

    def scaled(self, factor: float) -> Scenario:
        """The same scenario at `factor` times the demand, for sensitivity runs.

        Arrival rates, initial and maximum replicas, replicas lost and shortfall
        maxima scale (rounded); minimum replicas, prices, latencies and timings
        do not, so the fixed floor every policy pays shrinks relative to demand.
        """
        if not factor > 0:
            raise ValueError("factor must be positive")

        def times(value: int) -> int:
            return max(1, round(value * factor)) if value > 0 else 0

        data = self.model_dump()
        data["name"] = f"{self.name}-x{factor:g}"
        rate = data["arrivals"]["rate"]
        for key in ("per_s", "trough_per_s", "peak_per_s"):
            if key in rate:
                rate[key] *= factor
        for step in rate.get("steps", []):
            step["per_s"] *= factor
        for pool in data["pools"]:
            bounds = pool["replicas"]
            bounds["max"] = times(bounds["max"])
            bounds["initial"] = min(max(times(bounds["initial"]), bounds["min"]), bounds["max"])
        for event in data["events"]:
            if "count" in event:
                event["count"] = times(event["count"])
            if "max_replicas" in event:
                event["max_replicas"] = times(event["max_replicas"])
        return Scenario.model_validate(data)

    def hedged(self, shares: Mapping[str, float]) -> Scenario:
        """The same scenario with the gateway's `max_share` set on the named pools."""
        data = self.model_dump()
        names = {p["name"] for p in data["pools"]}
        unknown = sorted(set(shares) - names)
        if unknown:
            raise ValueError(f"max_share: no pool named {', '.join(unknown)}")
        for pool in data["pools"]:
            if pool["name"] in shares:
                pool["max_share"] = shares[pool["name"]]
        data["name"] = self.name + "".join(f"-{n}-share{v:g}" for n, v in sorted(shares.items()))
        return Scenario.model_validate(data)

    def with_scale_down_window(self, seconds: float) -> Scenario:
        """The same scenario with the autoscaler's scale-down stabilization set to `seconds`."""
        data = self.model_dump()
        data["autoscaler"]["scale_down_cooldown_s"] = seconds
        data["name"] = f"{self.name}-scaledown{seconds:g}"
        return Scenario.model_validate(data)

    def pool(self, name: str) -> PoolSpec:
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)

    def gateway_settings(self, mode: str, seed: int) -> GatewaySettings:
        """The gateway config of one run: pools as static replica URLs, `mode`, SLOs, seed."""
        return settings_from_dict(self._gateway_dict(mode, seed))

    def _gateway_dict(self, mode: str, seed: int) -> dict[str, Any]:
        pools = [
            {
                "name": p.name,
                "accelerator": p.accelerator,
                "price_per_hour": p.price_per_hour,
                "slots_per_replica": p.slots,
                "expected_latency_seconds": p.latency_s,
                "shapes": list(p.shapes) if p.shapes is not None else None,
                "replicas": [replica_url(p.name, i) for i in range(p.replicas.initial)],
                "min_replicas": p.replicas.min,
                "max_replicas": p.replicas.max,
                "max_share": p.max_share,
            }
            for p in self.pools
        ]
        for pool in pools:
            if not pool["replicas"]:  # a pool starting empty: a placeholder, synced away at t=0
                pool["replicas"] = [replica_url(str(pool["name"]), 0)]
        # Our plan is the autoscaler's metric: it sizes pools at the same target utilization
        # as the scaler every policy gets (a scenario's gateway section may still set it).
        defaults = {"target_utilization": self.autoscaler.target_utilization}
        return (
            defaults
            | dict(self.gateway)
            | {
                "mode": mode,
                "pools": pools,
                "slo": self.slo.model_dump(),
                "seed": seed,
            }
        )


def replica_url(pool: str, index: int) -> str:
    return f"http://{pool}-{index}.sim:{SIM_URL_PORT}"


def _describe(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        problems.append(f"{loc}: {str(err['msg']).removeprefix('Value error, ')}")
    return problems


def parse_scenario(data: Any, source: str = "<mapping>") -> Scenario:
    """Validate `data` (the YAML's contents); raises ScenarioError naming each bad field."""
    if not isinstance(data, Mapping):
        got = "an empty file" if data is None else type(data).__name__
        raise ScenarioError(source, [f"the top level must be a mapping, got {got}"])
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(source, _describe(exc)) from None
    try:
        scenario.gateway_settings("auto", scenario.seed)
    except ConfigError as exc:
        raise ScenarioError(source, [f"gateway: {p}" for p in exc.problems]) from None
    return scenario


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Read and validate a scenario YAML file; raises ScenarioError (file, YAML or field)."""
    source, data = read_yaml(path, ScenarioError)
    return parse_scenario(data, source)
