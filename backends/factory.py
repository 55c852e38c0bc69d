"""Build an engine and its admission figures from server settings."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from backends.clock import Clock
from backends.engines.base import Engine
from backends.engines.simulated import SimulatedEngine
from backends.profiles import AcceleratorProfile, get_profile
from backends.settings import ServerSettings


class EngineUnavailableError(RuntimeError):
    """The requested engine cannot be built here (missing package, bad model path)."""


@dataclass(frozen=True, slots=True)
class BuiltEngine:
    engine: Engine
    slots: int
    prior_service_s: float


# Real engines are imported only when asked for: torch and the Neuron SDK are optional.
_REAL_ENGINES = {
    "diffusers": "backends.engines.diffusers_engine",
    "neuron": "backends.engines.neuron_engine",
}


# The profile an engine gets when `--profile` is not given.
_DEFAULT_PROFILES = {"sim": "inf2", "neuron": "inf2", "diffusers": "g5-cuda"}


def default_profile(settings: ServerSettings) -> str:
    """The profile name `settings` stands for: its own, else the engine's default."""
    if settings.profile is not None:
        return settings.profile
    if settings.engine == "diffusers" and settings.device == "cpu":
        return "cpu"
    return _DEFAULT_PROFILES[settings.engine]


def resolve_profile(settings: ServerSettings, fallback: str | None = None) -> AcceleratorProfile:
    """The settings' profile with their overrides; `fallback` replaces the engine default.

    Raises KeyError naming the known profiles.
    """
    name = settings.profile or fallback or default_profile(settings)
    return get_profile(name).with_overrides(
        latency_s=settings.latency_s, slots=settings.slots, cold_start_s=settings.cold_start_s
    )


def build_engine(settings: ServerSettings, clock: Clock | None = None) -> BuiltEngine:
    """The engine named in `settings`; raises EngineUnavailableError with what to do."""
    profile = resolve_profile(settings)
    if settings.engine == "sim":
        engine = SimulatedEngine(profile, clock=clock, seed=settings.seed)
        return BuiltEngine(engine, profile.slots, profile.latency_s)
    module_name = _REAL_ENGINES[settings.engine]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise EngineUnavailableError(f"engine {settings.engine!r} cannot be loaded: {exc}") from exc
    built: BuiltEngine = module.build(settings, profile)
    return built
