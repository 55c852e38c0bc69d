"""`sd-backend`: run a model server."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from backends import bench
from backends.factory import EngineUnavailableError, build_engine
from backends.profiles import PROFILES
from backends.schemas import describe_validation_error
from backends.server import create_app
from backends.serving import GracefulServer, bind_socket, uvicorn_config
from backends.settings import ServerSettings

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sd-backend", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a model server")
    serve.add_argument("--engine", choices=["sim", "diffusers", "neuron"], default="sim")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--profile", help="accelerator profile (see `profiles`; default: the engine's)"
    )
    serve.add_argument("--slots", type=int, help="concurrent generations (default: profile's)")
    serve.add_argument("--max-queue", type=int, default=8, help="waiting room beyond the slots")
    serve.add_argument("--model", help="local model directory (real engines)")
    serve.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    serve.add_argument(
        "--dtype", choices=["auto", "float16", "bfloat16", "float32"], default="auto"
    )
    serve.add_argument("--scheduler", help="diffusers scheduler (e.g. euler, dpmpp_2m, ddim)")
    serve.add_argument("--max-batch", type=int, help="largest n per request (default: profile's)")
    serve.add_argument("--max-side-px", type=int, default=1024, help="diffusers: largest side")
    serve.add_argument("--enable-fault-injection", action="store_true")
    serve.add_argument("--latency-s", type=float, help="override the profile's mean latency")
    serve.add_argument("--cold-start-s", type=float, help="override the profile's cold start")
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--drain-timeout-s", type=float, default=60.0)
    serve.add_argument("--drain-delay-s", type=float, default=0.0)
    serve.add_argument("--log-level", default="info")
    sub.add_parser("profiles", help="list the accelerator profiles")
    bench.add_arguments(
        sub.add_parser("bench", help="measure images/s and latency of an engine and model")
    )
    return parser


def _settings(args: argparse.Namespace) -> ServerSettings:
    return ServerSettings(
        engine=args.engine,
        host=args.host,
        port=args.port,
        profile=args.profile,
        slots=args.slots,
        max_queue=args.max_queue,
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        scheduler=args.scheduler,
        max_batch=args.max_batch,
        max_side_px=args.max_side_px,
        enable_fault_injection=args.enable_fault_injection,
        latency_s=args.latency_s,
        cold_start_s=args.cold_start_s,
        seed=args.seed,
        drain_timeout_s=args.drain_timeout_s,
        drain_delay_s=args.drain_delay_s,
    )


def _print_profiles() -> None:
    print(f"{'name':<10} {'accelerator':<13} {'$/hour':>7} {'latency s':>9} {'slots':>5}  shapes")
    for name, p in sorted(PROFILES.items()):
        shapes = ",".join(p.shapes) if p.shapes else "any"
        print(
            f"{name:<10} {p.accelerator:<13} {p.price_per_hour_usd:>7.4f} "
            f"{p.latency_s:>9.2f} {p.slots:>5}  {shapes}"
        )


def serve(settings: ServerSettings, log_level: str = "info") -> int:
    """Build the engine, bind the port, serve until drained; returns the exit code."""
    try:
        built = build_engine(settings)
    except (EngineUnavailableError, KeyError) as exc:
        print(f"sd-backend: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return EXIT_USAGE
    app = create_app(
        built.engine, settings, slots=built.slots, prior_service_s=built.prior_service_s
    )
    try:
        sock = bind_socket(settings.host, settings.port)
    except OSError as exc:
        print(
            f"sd-backend: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr
        )
        return 1
    config = uvicorn_config(app, log_level=log_level)
    server = GracefulServer(config, on_drain=app.state.runtime.drain)
    accelerator = built.engine.capabilities().accelerator
    print(
        f"sd-backend: {settings.engine}/{accelerator} on http://{settings.host}:{sock.getsockname()[1]}",
        flush=True,
    )
    server.run(sockets=[sock])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "profiles":
        _print_profiles()
        return 0
    if args.command == "bench":
        return bench.main(args)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = _settings(args)
    except ValidationError as exc:
        print(f"sd-backend: invalid options: {describe_validation_error(exc)}", file=sys.stderr)
        return EXIT_USAGE
    return serve(settings, args.log_level)
