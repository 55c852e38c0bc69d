"""Gateway settings: a YAML file, overridden by `GATEWAY_*` env, overridden by explicit values.

Precedence, highest first: `overrides` passed to `load_settings` (CLI flags), environment
variables (`GATEWAY_PORT=9000`, `GATEWAY_SLO__INTERACTIVE_SECONDS=1.5`), the YAML file, the
defaults below. Every model is frozen; every invalid input raises `ConfigError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

Mode = Literal["auto", "cost", "capacity", "latency", "round_robin", "least_request"]
UpstreamProtocol = Literal["v1", "genimage"]

# Init kwarg carrying explicit overrides past the env layer (see settings_customise_sources).
_OVERRIDES_KEY = "_gateway_overrides"


class ConfigError(Exception):
    """Invalid configuration: `source` names the file, `problems` each say 'field.path: reason'."""

    what = "gateway config"

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        sep = " " if len(self.problems) == 1 else "\n  "
        super().__init__(f"invalid {self.what} {source}:{sep}" + "\n  ".join(self.problems))


class SloSettings(BaseModel):
    """Completion objectives per priority class, in seconds."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    interactive_seconds: float = Field(default=2.0, gt=0)
    batch_seconds: float = Field(default=60.0, gt=0)


def _normalise_shape(shape: str) -> str:
    width, sep, height = shape.strip().lower().partition("x")
    if sep and width.isdigit() and height.isdigit():
        w, h = int(width), int(height)
        if w > 0 and h > 0 and w % 8 == 0 and h % 8 == 0:
            return f"{w}x{h}"
    raise ValueError(f"shape {shape!r} must be 'WxH' with positive multiples of 8, e.g. '512x512'")


def _normalise_replica(url: str) -> str:
    """'http(s)://host[:port]' with an optional trailing '/', returned without the slash."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port  # raises ValueError when out of range or not a number
    except ValueError as exc:
        raise ValueError(f"replica URL {url!r} is malformed: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"replica URL {url!r} must be an absolute http:// or https:// URL")
    if not parts.hostname:
        raise ValueError(f"replica URL {url!r} has no host")
    if port == 0:
        raise ValueError(f"replica URL {url!r} has port 0")
    if "@" in parts.netloc or any(c.isspace() for c in parts.netloc):
        raise ValueError(f"replica URL {url!r} has an invalid host part")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in url or "#" in url:
        raise ValueError(f"replica URL {url!r} must have no path, query or fragment")
    return f"{parts.scheme.lower()}://{parts.netloc.lower().rstrip(':')}"


class PoolConfig(BaseModel):
    """One pool of model servers on one kind of accelerator, as written in the YAML file.

    Exactly one of `replicas` (static URLs, normalised without a trailing slash) or `dns`
    ('host:port', e.g. a Kubernetes headless Service) is set. `shapes` None means any shape.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: str = Field(pattern=r"^[a-z0-9_-]{1,63}$")  # lowercase letters, digits, '-', '_'
    accelerator: str = Field(min_length=1)  # instance type, e.g. inf2.xlarge
    price_per_hour: float = Field(ge=0)  # USD per replica-hour
    slots_per_replica: int = Field(default=1, ge=1)  # images one replica serves at once
    expected_latency_seconds: float = Field(default=1.0, gt=0)  # prior per image until measured
    shapes: frozenset[str] | None = None  # 'WxH' the pool serves; None: any shape
    replicas: tuple[str, ...] = ()  # static replica base URLs
    dns: str | None = None  # 'host:port' resolved to replica addresses
    protocol: UpstreamProtocol = "v1"  # v1: /v1/images; genimage: the paper's sample servers
    read_timeout_s: float | None = Field(default=None, gt=0)  # None: the gateway's default
    # Scaling bounds of the pool's autoscaler (KEDA minReplicaCount/maxReplicaCount). The
    # minimum runs (and is paid for) whatever the routing, so cost mode fills it first; the
    # maximum is what the desired-replicas plan may grow the pool to (None: the replicas it
    # has now, a pool that does not scale).
    min_replicas: int = Field(default=0, ge=0)
    max_replicas: int | None = Field(default=None, ge=1)
    # A hedge for a pool that can lose most of its capacity at once (spot, scarce instance
    # types): it carries at most this share of the demand while other pools have room, so
    # their headroom can absorb its loss. Costs the price gap on the share moved. None: no cap.
    max_share: float | None = Field(default=None, gt=0, le=1)

    @field_validator("shapes")
    @classmethod
    def _check_shapes(cls, shapes: frozenset[str] | None) -> frozenset[str] | None:
        if shapes is None:
            return None
        if not shapes:
            raise ValueError("must not be empty; omit 'shapes' to accept any shape")
        return frozenset(_normalise_shape(s) for s in shapes)

    @field_validator("replicas")
    @classmethod
    def _check_replicas(cls, replicas: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        pool = info.data.get("name", "?")
        urls: list[str] = []
        for url in replicas:
            try:
                normalised = _normalise_replica(url)
            except ValueError as exc:
                raise ValueError(f"pool {pool!r}: {exc}") from None
            if normalised in urls:
                raise ValueError(f"pool {pool!r}: duplicate replica URL {url!r}")
            urls.append(normalised)
        return tuple(urls)

    @field_validator("dns")
    @classmethod
    def _check_dns(cls, dns: str | None) -> str | None:
        if dns is None:
            return None
        host, sep, port = dns.strip().rpartition(":")
        bad_host = not host or any(c in host for c in "/@?# ")
        if not sep or bad_host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{dns!r} must be 'host:port' with a port in 1..65535")
        return f"{host}:{int(port)}"

    @model_validator(mode="after")
    def _bounds_in_order(self) -> PoolConfig:
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError(
                f"pool {self.name!r}: max_replicas ({self.max_replicas}) is below "
                f"min_replicas ({self.min_replicas})"
            )
        return self

    @model_validator(mode="after")
    def _one_discovery(self) -> PoolConfig:
        if bool(self.replicas) == (self.dns is not None):
            which = "both are set" if self.replicas else "neither is set"
            raise ValueError(
                f"pool {self.name!r}: set exactly one of 'replicas' (non-empty) or 'dns'; {which}"
            )
        return self


class _Layer(PydanticBaseSettingsSource):
    """A fixed mapping of values: one layer of the precedence order."""

    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._values


class GatewaySettings(BaseSettings):
    """Every mode, bound, timeout and limit of the gateway, with units in the names.

    Constructor kwargs are the lowest explicit layer: `GATEWAY_*` env vars beat them.
    """

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        allow_inf_nan=False,
        env_prefix="GATEWAY_",
        env_nested_delimiter="__",
    )

    mode: Mode = "auto"  # routing policy; auto: cost/capacity chosen by the state machine
    slo: SloSettings = SloSettings()  # completion objectives per priority class
    pools: tuple[PoolConfig, ...]  # at least one pool, names unique
    host: str = Field(default="0.0.0.0", min_length=1)  # listen address
    port: int = Field(default=8080, ge=0, le=65535)  # listen port; 0: any free port
    workers: int = Field(default=1, ge=1, le=64)  # server processes
    admin_token: str | None = Field(default=None, min_length=1, repr=False)  # None: no admin API
    connect_timeout_s: float = Field(default=2.0, gt=0)  # TCP connect to a replica
    read_timeout_s: float = Field(default=120.0, gt=0)  # between bytes from a replica
    request_timeout_s: float = Field(default=300.0, gt=0)  # whole request, retries included
    max_attempts: int = Field(default=2, ge=1, le=5)  # tries per request, first included
    retry_budget_ratio: float = Field(default=0.2, ge=0, le=1)  # retries / recent requests
    retry_budget_min_per_s: float = Field(default=3.0, ge=0)  # retries always allowed per second
    probe_interval_s: float = Field(default=2.0, gt=0)  # between active health probes
    probe_timeout_s: float = Field(default=1.0, gt=0)  # one probe; at most the interval
    unhealthy_threshold: int = Field(default=2, ge=1)  # failed probes to mark unhealthy
    healthy_threshold: int = Field(default=2, ge=1)  # passed probes to mark healthy
    outlier_consecutive_failures: int = Field(default=5, ge=1)  # errors in a row to eject
    outlier_base_ejection_s: float = Field(default=30.0, gt=0)  # times the ejection count
    outlier_max_ejection_s: float = Field(default=300.0, gt=0)  # cap on one ejection
    outlier_max_ejected_share: float = Field(
        default=0.5, ge=0, le=1
    )  # of all replicas, one always allowed
    capacity_hold_s: float = Field(default=5.0, ge=0)  # a capacity error marks a pool constrained
    slow_start_s: float = Field(default=10.0, ge=0)  # ramp of a (re)joined replica's share
    ewma_alpha: float = Field(default=0.2, gt=0, le=1)  # weight of the newest latency sample
    rate_window_s: float = Field(default=10.0, gt=0)  # window of the arrival-rate estimate
    target_utilization: float = Field(default=0.8, gt=0, le=1)  # cost mode fills pools to this
    # Batch work is shed only when the demand would fill the pools beyond this; None:
    # halfway from target_utilization to full (batch may use half of the target's headroom).
    batch_admit_utilization: float | None = Field(default=None, gt=0, le=1)
    # The replica plan follows a rise of the rate_window_s rate over its one-minute rate at
    # once only when the rise exceeds this many standard deviations of Poisson noise.
    plan_rise_sigmas: float = Field(default=2.0, ge=0)
    control_interval_s: float = Field(default=1.0, gt=0)  # period of the control loop
    capacity_enter_share: float = Field(default=0.9, gt=0, le=1)  # demand/capacity: capacity mode
    capacity_exit_share: float = Field(default=0.75, gt=0, le=1)  # demand/capacity: back to cost
    capacity_mode_hold_s: float = Field(default=30.0, ge=0)  # shortfall clear this long: cost mode
    recovery_hold_s: float = Field(
        default=10.0, ge=0
    )  # a recovered pool stays RECOVERING this long
    # A pool whose replicas stay below the desired count this long, without growing, is
    # taken to be out of nodes: the plan caps it at what it has until it grows.
    scale_up_timeout_s: float = Field(default=300.0, gt=0)
    max_spend_per_hour_usd: float | None = Field(default=None, gt=0)  # spend guardrail; None: off
    discovery_interval_s: float = Field(default=10.0, gt=0)  # re-resolve DNS pools
    max_body_bytes: int = Field(default=1_048_576, ge=1)  # larger request bodies get 413
    max_header_bytes: int = Field(default=16_384, ge=1024)  # larger request heads get 431
    header_read_timeout_s: float = Field(default=10.0, gt=0)  # slowloris guard
    body_read_timeout_s: float = Field(default=60.0, gt=0)  # slower bodies get 408
    max_connections: int = Field(default=4096, ge=1)  # concurrent client connections; then 503
    keepalive_timeout_s: float = Field(default=75.0, gt=0)  # above an ALB's 60 s idle timeout
    max_in_flight_requests: int = Field(default=2048, ge=1)  # image requests at once; then 503
    # Shed when no pool meets the objective and the request's predicted finish on the
    # replica picked is beyond this x the objective.
    overload_slo_factor: float = Field(default=5.0, ge=1)
    drain_delay_s: float = Field(default=15.0, ge=0)  # after SIGTERM: keep serving this long
    shutdown_timeout_s: float = Field(default=330.0, gt=0)  # then wait for in-flight work
    api_keys: tuple[str, ...] = Field(default=(), repr=False)  # empty and no file: no auth
    api_keys_file: str | None = None  # one key per line; '#' comments
    api_key_rate_per_s: float = Field(default=10.0, gt=0)  # per-key sustained request rate
    api_key_burst: int = Field(default=20, ge=1)  # per-key burst
    admin_port: int | None = Field(default=None, ge=0, le=65535)  # admin API on its own port
    metrics_on_admin_port: bool = False  # serve /metrics only on the admin port
    trusted_proxies: int = Field(default=0, ge=0, le=16)  # proxies in front (an ALB: 1)
    max_connections_per_host: int = Field(default=64, ge=1)  # upstream connector bound
    seed: int | None = None  # tie-breaking randomness; None: from the OS

    @field_validator("pools")
    @classmethod
    def _check_pools(cls, pools: tuple[PoolConfig, ...]) -> tuple[PoolConfig, ...]:
        # Checked here, not with min_length, which would also fire when a pool is invalid.
        if not pools:
            raise ValueError("at least one pool is required")
        seen: set[str] = set()
        for pool in pools:
            if pool.name in seen:
                raise ValueError(f"duplicate pool name {pool.name!r}")
            seen.add(pool.name)
        return pools

    @field_validator("probe_timeout_s")
    @classmethod
    def _probe_within_interval(cls, timeout_s: float, info: ValidationInfo) -> float:
        interval_s = info.data.get("probe_interval_s")
        if interval_s is not None and timeout_s > interval_s:
            raise ValueError(f"must not exceed probe_interval_s ({interval_s})")
        return timeout_s

    @field_validator("capacity_exit_share")
    @classmethod
    def _exit_below_enter(cls, exit_share: float, info: ValidationInfo) -> float:
        enter = info.data.get("capacity_enter_share")
        if enter is not None and exit_share > enter:
            raise ValueError(f"must not exceed capacity_enter_share ({enter})")
        return exit_share

    @field_validator("batch_admit_utilization")
    @classmethod
    def _batch_above_target(cls, share: float | None, info: ValidationInfo) -> float | None:
        target = info.data.get("target_utilization")
        if share is not None and target is not None and share < target:
            raise ValueError(f"must be at least target_utilization ({target})")
        return share

    @field_validator("outlier_max_ejection_s")
    @classmethod
    def _max_above_base(cls, max_s: float, info: ValidationInfo) -> float:
        base_s = info.data.get("outlier_base_ejection_s")
        if base_s is not None and max_s < base_s:
            raise ValueError(f"must be at least outlier_base_ejection_s ({base_s})")
        return max_s

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest first: explicit overrides (CLI flags), GATEWAY_* env, init kwargs (the file).
        values = dict(init_settings())
        overrides = values.pop(_OVERRIDES_KEY, None) or {}
        return _Layer(settings_cls, dict(overrides)), env_settings, _Layer(settings_cls, values)


def _describe(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        problems.append(f"{loc}: {str(err['msg']).removeprefix('Value error, ')}")
    return problems


def _build(data: Mapping[Any, Any], source: str, overrides: Mapping[str, Any]) -> GatewaySettings:
    bad_keys = [k for k in data if not isinstance(k, str) or k == _OVERRIDES_KEY]
    if bad_keys:
        raise ConfigError(source, [f"{k}: Extra inputs are not permitted" for k in bad_keys])
    kwargs: dict[str, Any] = dict(data)
    kwargs[_OVERRIDES_KEY] = {k: v for k, v in overrides.items() if v is not None}
    try:
        return GatewaySettings(**kwargs)
    except ValidationError as exc:
        raise ConfigError(source, _describe(exc)) from None
    except SettingsError as exc:  # a GATEWAY_* variable that cannot be parsed
        raise ConfigError(source, [f"GATEWAY_* environment: {exc}"]) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a repeated mapping key (plain PyYAML keeps the last one)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode):
            key = loader.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def read_yaml(
    path: str | os.PathLike[str], error: type[ConfigError] = ConfigError
) -> tuple[str, Any]:
    """The file's name and its parsed YAML; raises `error` for a missing or unreadable file,
    invalid YAML or a repeated key."""
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(source, ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(source, [f"cannot read file: {exc}"]) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise error(source, [f"invalid YAML{where}: {exc.problem or exc}"]) from None
    except yaml.YAMLError as exc:
        raise error(source, [f"invalid YAML: {exc}"]) from None
    return source, data


def load_settings(path: str | os.PathLike[str], **overrides: Any) -> GatewaySettings:
    """Read the YAML file at `path`, apply `GATEWAY_*` env, then `overrides`; validate.

    Overrides whose value is None are ignored (an absent CLI flag). Raises ConfigError for a
    missing or unreadable file, invalid YAML, a top level that is not a mapping, or any
    invalid field; the message names the file and every offending field path.
    """
    source, data = read_yaml(path)
    if not isinstance(data, Mapping):
        got = "an empty file" if data is None else type(data).__name__
        raise ConfigError(source, [f"the top level must be a mapping of settings, got {got}"])
    return _build(data, source, overrides)


def settings_from_dict(data: Mapping[str, Any]) -> GatewaySettings:
    """Validate `data` as the contents of a config file (`GATEWAY_*` env still wins).

    Raises ConfigError naming every offending field path.
    """
    return _build(data, "<mapping>", {})
