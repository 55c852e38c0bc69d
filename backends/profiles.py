"""Accelerator profiles: price, latency and slots of each pool kind, as data.

Reference figures are for Stable Diffusion at 10 steps, 512x512, from the
public sample deployment of Biran & Kissos, "Adaptive Orchestration for
Large-Scale Inference on Heterogeneous Accelerator Systems" (arXiv
2503.20074), with AWS on-demand prices as given there. Slots are the number of
images a replica works on at once: max images/min at SLO times latency,
rounded (one for every profile there).
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class AcceleratorProfile:
    """How one kind of replica performs and what it costs.

    `latency_s` is the mean service time of one image at `reference_steps`
    and `reference_width` x `reference_height`. `latency_cv` is the
    coefficient of variation of service time (lognormal). `shapes` is None
    when the engine runs any shape (GPUs, CPUs), else the compiled shapes.
    """

    name: str
    accelerator: str
    engine_kind: str
    price_per_hour_usd: float
    latency_s: float
    max_images_per_min: float
    slots: int = 1
    max_batch: int = 4
    latency_cv: float = 0.08
    cold_start_s: float = 5.0
    shapes: tuple[str, ...] | None = None
    reference_steps: int = 10
    reference_width: int = 512
    reference_height: int = 512
    # Share of the service time that does not scale with steps (text encoder, VAE decode).
    fixed_fraction: float = 0.15
    source: str = "arXiv 2503.20074 sample deployment"

    def with_overrides(
        self,
        *,
        latency_s: float | None = None,
        slots: int | None = None,
        cold_start_s: float | None = None,
        latency_cv: float | None = None,
    ) -> AcceleratorProfile:
        """A copy with the given fields replaced (None keeps the profile's value)."""
        return replace(
            self,
            latency_s=self.latency_s if latency_s is None else latency_s,
            slots=self.slots if slots is None else slots,
            cold_start_s=self.cold_start_s if cold_start_s is None else cold_start_s,
            latency_cv=self.latency_cv if latency_cv is None else latency_cv,
        )


# Compiled Neuron pipelines serve the shapes they were traced for, batch 1
# (Neuron SDK docs: a pipeline is compiled for fixed height, width and batch).
_NEURON_SHAPES = ("512x512",)

PROFILES: dict[str, AcceleratorProfile] = {
    p.name: p
    for p in (
        AcceleratorProfile(
            name="inf2",
            accelerator="inf2.xlarge",
            engine_kind="neuron",
            price_per_hour_usd=0.7582,
            latency_s=0.67,
            max_images_per_min=105,
            max_batch=1,
            shapes=_NEURON_SHAPES,
            cold_start_s=8.0,
        ),
        AcceleratorProfile(
            name="trn1",
            accelerator="trn1.2xlarge",
            engine_kind="neuron",
            price_per_hour_usd=1.3438,
            latency_s=0.51,
            max_images_per_min=130,
            max_batch=1,
            shapes=_NEURON_SHAPES,
            cold_start_s=8.0,
        ),
        AcceleratorProfile(
            name="g5-triton",
            accelerator="g5.xlarge",
            engine_kind="triton",
            price_per_hour_usd=1.006,
            latency_s=0.68,
            max_images_per_min=90,
        ),
        AcceleratorProfile(
            name="g5-cuda",
            accelerator="g5.xlarge",
            engine_kind="diffusers",
            price_per_hour_usd=1.006,
            latency_s=0.92,
            max_images_per_min=60,
        ),
        AcceleratorProfile(
            name="g6",
            accelerator="g6.xlarge",
            engine_kind="triton",
            price_per_hour_usd=0.8048,
            latency_s=0.96,
            max_images_per_min=61,
        ),
        # Not from the paper: an estimate for diffusers on an 8-vCPU x86 host
        # (c6i.2xlarge on-demand list price), so a CPU pool can be simulated as
        # the slow, always-available fallback. Replace with measured figures.
        AcceleratorProfile(
            name="cpu",
            accelerator="c6i.2xlarge",
            engine_kind="diffusers",
            price_per_hour_usd=0.34,
            latency_s=9.0,
            max_images_per_min=6.5,
            latency_cv=0.05,
            cold_start_s=3.0,
            source="estimate, not measured",
        ),
    )
}

# The paper's shorthand for the diffusers CUDA pool.
PROFILES["g5"] = PROFILES["g5-cuda"]


def get_profile(name: str) -> AcceleratorProfile:
    """The named profile; raises KeyError listing the known names."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise KeyError(f"unknown accelerator profile {name!r}; known: {known}") from None
