"""`sd-backend bench`: images/s and latency percentiles of one engine, model and shape.

The engine is built from the same options as `serve` and loaded (with its
warm-up), then `--requests` requests go straight to it, `--concurrency` at a
time, without HTTP. Request i uses seed `--seed + i`. The figures fill an
accelerator profile: `latency_s` is the median seconds per image and
`max_images_per_min` the measured throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from dataclasses import asdict, dataclass

import orjson
from pydantic import ValidationError

from backends.engines.base import Engine, EngineError, GenerationRequest
from backends.factory import EngineUnavailableError, build_engine
from backends.schemas import ImageRequest, describe_validation_error
from backends.settings import ServerSettings

EXIT_USAGE = 2


@dataclass(frozen=True, slots=True)
class BenchResult:
    """What one benchmark run measured; seconds unless named otherwise."""

    engine: str
    accelerator: str
    model: str | None
    device: str | None
    dtype: str | None
    shape: str
    steps: int
    n: int
    requests: int
    concurrency: int
    images: int
    load_s: float
    wall_s: float
    images_per_s: float
    latency_p50_s: float
    latency_p95_s: float
    latency_mean_s: float
    inference_p50_s: float
    seconds_per_image_p50: float

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)

    def report(self) -> str:
        where = ", ".join(str(x) for x in (self.device, self.dtype, self.accelerator) if x)
        return "\n".join(
            [
                f"engine      {self.engine} ({where})",
                f"model       {self.model or '-'}",
                f"shape       {self.shape}, {self.steps} steps, n={self.n}",
                f"requests    {self.requests} at concurrency {self.concurrency}; "
                f"load and warm-up {self.load_s:.2f} s",
                f"images/s    {self.images_per_s:.3f}  "
                f"({self.images} images in {self.wall_s:.2f} s)",
                f"latency     p50 {self.latency_p50_s:.4f} s  p95 {self.latency_p95_s:.4f} s  "
                f"mean {self.latency_mean_s:.4f} s  (per request)",
                f"inference   p50 {self.inference_p50_s:.4f} s per request, "
                f"{self.seconds_per_image_p50:.4f} s per image",
            ]
        )


def percentile(values: list[float], q: float) -> float:
    """The `q`-th percentile (0..100) of `values`, interpolating between ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


async def measure(
    engine: Engine, template: GenerationRequest, *, requests: int, concurrency: int
) -> tuple[list[float], list[float], float]:
    """Send `requests` copies of `template` (seed + i) with `concurrency` in flight.

    Returns per-request wall latencies, per-request engine seconds, and the total wall time.
    """
    latencies: list[float] = []
    inference: list[float] = []
    next_index = iter(range(requests))
    seed = template.seed or 0

    async def worker() -> None:
        for i in next_index:
            request = GenerationRequest(
                prompt=template.prompt,
                negative_prompt=template.negative_prompt,
                width=template.width,
                height=template.height,
                steps=template.steps,
                guidance_scale=template.guidance_scale,
                seed=seed + i,
                n=template.n,
            )
            started = time.perf_counter()
            result = await engine.generate(request)
            latencies.append(time.perf_counter() - started)
            inference.append(result.inference_seconds)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, inference, time.perf_counter() - started


async def run_bench(
    settings: ServerSettings, template: GenerationRequest, *, requests: int, concurrency: int
) -> BenchResult:
    """Build, load and measure the engine of `settings`.

    Raises EngineUnavailableError (cannot build) or EngineError (load or generation failed).
    """
    built = build_engine(settings)
    engine = built.engine
    try:
        started = time.perf_counter()
        await engine.load()
        load_s = time.perf_counter() - started
        latencies, inference, wall_s = await measure(
            engine, template, requests=requests, concurrency=concurrency
        )
    finally:
        await engine.close()
    caps = engine.capabilities()
    images = requests * template.n
    return BenchResult(
        engine=engine.name,
        accelerator=caps.accelerator,
        model=settings.model,
        device=caps.extra.get("device"),
        dtype=caps.extra.get("dtype"),
        shape=template.shape,
        steps=template.steps or caps.default_steps,
        n=template.n,
        requests=requests,
        concurrency=concurrency,
        images=images,
        load_s=load_s,
        wall_s=wall_s,
        images_per_s=images / wall_s if wall_s > 0 else math.inf,
        latency_p50_s=percentile(latencies, 50),
        latency_p95_s=percentile(latencies, 95),
        latency_mean_s=sum(latencies) / len(latencies),
        inference_p50_s=percentile(inference, 50),
        seconds_per_image_p50=percentile(inference, 50) / template.n,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `bench` flags: the engine options of `serve`, then the workload."""
    parser.add_argument("--engine", choices=["sim", "diffusers", "neuron"], default="diffusers")
    parser.add_argument("--model", help="local model directory")
    parser.add_argument("--profile", help="accelerator profile (default: the engine's)")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument(
        "--dtype", choices=["auto", "float16", "bfloat16", "float32"], default="auto"
    )
    parser.add_argument("--scheduler", help="diffusers scheduler (e.g. euler, dpmpp_2m)")
    parser.add_argument("--slots", type=int, help="engine slots (default: the concurrency)")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--steps", type=int, help="denoising steps (default: the profile's)")
    parser.add_argument("--n", type=int, default=1, help="images per request")
    parser.add_argument("--requests", type=int, default=10, help="requests to measure")
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight")
    parser.add_argument("--prompt", default="a photograph of an astronaut riding a horse")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first request")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def main(args: argparse.Namespace) -> int:
    """Run `sd-backend bench`; prints the report (or JSON) and returns the exit code."""
    if args.requests < 1 or args.concurrency < 1:
        print("sd-backend bench: --requests and --concurrency must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        template = ImageRequest(
            prompt=args.prompt,
            width=args.width,
            height=args.height,
            steps=args.steps,
            seed=args.seed,
            n=args.n,
        ).to_generation()
        settings = ServerSettings(
            engine=args.engine,
            model=args.model,
            profile=args.profile,
            device=args.device,
            dtype=args.dtype,
            scheduler=args.scheduler,
            slots=args.slots or args.concurrency,
            max_batch=args.n,
            max_side_px=max(template.width, template.height, 64),
            cold_start_s=0.0,
        )
    except ValidationError as exc:
        print(
            f"sd-backend bench: invalid options: {describe_validation_error(exc)}", file=sys.stderr
        )
        return EXIT_USAGE
    try:
        result = asyncio.run(
            run_bench(settings, template, requests=args.requests, concurrency=args.concurrency)
        )
    except (EngineUnavailableError, KeyError) as exc:
        print(f"sd-backend bench: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return EXIT_USAGE
    except EngineError as exc:
        print(f"sd-backend bench: {exc}", file=sys.stderr)
        return 1
    print(result.to_json().decode() if args.json else result.report())
    return 0
