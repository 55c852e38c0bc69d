"""Prometheus collectors of one model server, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Buckets spanning a fast accelerator image (~0.5 s) to a slow CPU batch.
SERVICE_BUCKETS_S = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 40.0, 80.0)


class BackendMetrics:
    """Counters, histograms and gauges; every series carries the `accelerator` label."""

    def __init__(self, accelerator: str, engine: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.accelerator = accelerator
        r = self.registry
        self.requests = Counter(
            "sd_backend_requests_total",
            "Image requests by endpoint and HTTP status.",
            ["accelerator", "endpoint", "status"],
            registry=r,
        )
        self.received = Counter(
            "sd_backend_received_total",
            "Image requests received, counted on arrival.",
            ["accelerator", "endpoint"],
            registry=r,
        )
        self.images = Counter(
            "sd_backend_images_total", "Images generated.", ["accelerator"], registry=r
        )
        self.rejected = Counter(
            "sd_backend_rejected_total",
            "Requests refused before inference, by reason.",
            ["accelerator", "reason"],
            registry=r,
        )
        self.inference = Histogram(
            "sd_backend_inference_seconds",
            "Engine time per request.",
            ["accelerator"],
            buckets=SERVICE_BUCKETS_S,
            registry=r,
        )
        self.queue_wait = Histogram(
            "sd_backend_queue_wait_seconds",
            "Time spent waiting for a slot.",
            ["accelerator"],
            buckets=(0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
            registry=r,
        )
        self.queue_depth = Gauge(
            "sd_backend_queue_depth",
            "Requests holding or waiting for a slot.",
            ["accelerator"],
            registry=r,
        )
        self.slots = Gauge(
            "sd_backend_slots", "Concurrent generation slots.", ["accelerator"], registry=r
        )
        self.ready = Gauge(
            "sd_backend_ready", "1 when the server accepts work.", ["accelerator"], registry=r
        )
        self.info = Gauge(
            "sd_backend_info",
            "Constant 1, labelled with the engine.",
            ["accelerator", "engine"],
            registry=r,
        )
        self.info.labels(accelerator, engine).set(1)
