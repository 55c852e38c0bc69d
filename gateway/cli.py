"""`sd-gateway`: serve the gateway, or run the embedded demo."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

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
    return parser


def _factory() -> object:
    """Uvicorn factory for multi-worker runs: each worker loads the config itself."""
    from gateway.app import create_app

    return create_app(load_settings(os.environ[CONFIG_ENV]))


def serve(settings: GatewaySettings, config_path: str, log_level: str) -> int:
    import uvicorn

    from backends.serving import GracefulServer, bind_socket, uvicorn_config
    from gateway.app import create_app

    if settings.workers > 1:
        os.environ[CONFIG_ENV] = os.path.abspath(config_path)
        uvicorn.run(
            "gateway.cli:_factory",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            http="httptools",
            access_log=False,
            log_level=log_level,
            timeout_keep_alive=75,
        )
        return 0
    try:
        sock = bind_socket(settings.host, settings.port)
    except OSError as exc:
        print(
            f"sd-gateway: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr
        )
        return 1
    app = create_app(settings)
    server = GracefulServer(
        uvicorn_config(app, log_level=log_level), on_drain=app.state.gateway.drain
    )
    print(f"sd-gateway: listening on http://{settings.host}:{sock.getsockname()[1]}", flush=True)
    server.run(sockets=[sock])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
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
