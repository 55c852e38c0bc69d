"""Model servers for Stable Diffusion: one HTTP shell, pluggable engines."""

__version__ = "0.1.0"
