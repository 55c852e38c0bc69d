"""`sd-gateway`: serve the gateway, or run the embedded demo."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn

from backends.serving import (
    GracefulServer,
    QuietServer,
    bind_socket,
    run_event_loop,
    uvicorn_config,
)
from gateway.app import create_app
from gateway.httpserver import limited_protocol
from gateway.settings import ConfigError, GatewaySettings, load_settings

EXIT_CONFIG = 2
CONFIG_ENV = "GATEWAY_CONFIG_FILE"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sd-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", required=True, help="gateway YAML config")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.add_argument("--log-level", default="info")
    demo = sub.add_parser("demo", help="simulated pools and the gateway on 127.0.0.1")
    demo.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    demo.add_argument("--port", type=int, default=0, help="gateway port (0: any free port)")
    demo.add_argument("--rate", type=float, default=1.0, help="steady requests per second")
    demo.add_argument("--serve", action="store_true", help="keep running after the load")
    demo.add_argument("--log-level", default="warning")
    sub.add_parser(
        "bench",
        help="measure the gateway's overhead against direct, nginx and a naive proxy",
        add_help=False,
    )
    sub.add_parser(
        "simulate",
        help="compare routing policies in the discrete-event simulator",
        description="see `sd-gateway simulate --help`",
        add_help=False,
    )
    return parser


# Allocations between young-generation collections (the interpreter's default is 700).
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a serving process.

    A request allocates a few dozen objects that outlive it briefly, and with
    the default threshold the collector ran every 16 requests or so and took
    about 6 % of a worker's CPU (full collections walk every object the
    imports made). Objects alive now are frozen out of collection, and young
    collections run at most every `GC_YOUNG_THRESHOLD` allocations. Requests
    leave very few reference cycles, so little garbage waits longer.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _factory() -> object:
    """Uvicorn factory for multi-worker runs: each worker loads the config itself."""
    settings = load_settings(os.environ[CONFIG_ENV])
    limited_protocol(settings.max_header_bytes, settings.header_read_timeout_s)
    app = create_app(settings)
    tune_gc()
    return app


def server_options(settings: GatewaySettings) -> dict[str, Any]:
    """Uvicorn options that carry the gateway's connection limits."""
    return {
        "http": limited_protocol(settings.max_header_bytes, settings.header_read_timeout_s),
        "limit_concurrency": settings.max_connections,
        "timeout_keep_alive": settings.keepalive_timeout_s,
        "timeout_graceful_shutdown": settings.shutdown_timeout_s,
        # X-Forwarded-For is read by the gateway itself, with its trusted-proxy count.
        "proxy_headers": False,
    }


async def _serve(settings: GatewaySettings, sock: socket.socket, log_level: str) -> None:
    app = create_app(settings)
    tune_gc()
    gateway = app.state.gateway
    options = server_options(settings) | {"log_level": log_level}
    server = GracefulServer(uvicorn_config(app, **options), on_drain=gateway.drain)
    admin_app = app.state.admin_app
    if admin_app is None:
        await server.serve(sockets=[sock])
        return
    assert settings.admin_port is not None
    admin_sock = bind_socket(settings.host, settings.admin_port)
    print(
        f"sd-gateway: admin API on http://{settings.host}:{admin_sock.getsockname()[1]}", flush=True
    )
    admin = QuietServer(uvicorn_config(admin_app, lifespan="off", log_level=log_level))
    admin_task = asyncio.create_task(admin.serve(sockets=[admin_sock]))
    try:
        await server.serve(sockets=[sock])
    finally:
        admin.should_exit = True
        await admin_task


def serve(settings: GatewaySettings, config_path: str, log_level: str) -> int:
    if settings.workers > 1:
        os.environ[CONFIG_ENV] = os.path.abspath(config_path)
        uvicorn.run(
            "gateway.cli:_factory",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            access_log=False,
            log_level=log_level,
            loop="uvloop",
            **(server_options(settings) | {"http": "gateway.httpserver:GatewayHttpProtocol"}),
        )
        return 0
    try:
        sock = bind_socket(settings.host, settings.port)
    except OSError as exc:
        print(
            f"sd-gateway: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr
        )
        return 1
    print(f"sd-gateway: listening on http://{settings.host}:{sock.getsockname()[1]}", flush=True)
    run_event_loop(_serve(settings, sock, log_level))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "simulate":
        from loadtest.sim.cli import main as simulate

        return simulate(argv[1:])
    if argv and argv[0] == "bench":
        from loadtest.overhead import main as bench

        return bench(argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "demo":
        from gateway.demo import run_demo

        return run_demo(
            duration_s=args.duration, port=args.port, rate_per_s=args.rate, keep_serving=args.serve
        )
    try:
        settings = load_settings(args.config, host=args.host, port=args.port, workers=args.workers)
    except ConfigError as exc:
        print(f"sd-gateway: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return serve(settings, args.config, args.log_level)
