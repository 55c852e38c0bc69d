"""A cost- and capacity-aware gateway for Stable Diffusion on mixed accelerators."""

__version__ = "0.1.0"
