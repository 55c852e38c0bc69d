"""Inference engines behind one protocol, and a factory that imports them lazily."""

from backends.engines.base import (
    Capabilities,
    Engine,
    EngineError,
    GenerationRequest,
    GenerationResult,
    UnsupportedRequestError,
)

__all__ = [
    "Capabilities",
    "Engine",
    "EngineError",
    "GenerationRequest",
    "GenerationResult",
    "UnsupportedRequestError",
]
