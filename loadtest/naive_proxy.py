"""The proxy people write first: FastAPI, a new httpx client per request, whole bodies.

    python -m loadtest.naive_proxy --upstream http://127.0.0.1:P --port Q

The baseline of the overhead benchmark, deliberately unoptimised in the
usual ways (a client and its connection pool per request, the upstream body
read whole, then sent). Served like the gateway: uvicorn, uvloop, httptools,
one worker. Never use it for anything else.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import httpx
import uvicorn
from fastapi import FastAPI, Request, Response


def create_app(upstream: str) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None)

    @app.post("/v1/images")
    async def images(request: Request) -> Response:
        body = await request.body()
        async with httpx.AsyncClient(timeout=120.0) as client:
            answer = await client.post(
                upstream + "/v1/images",
                content=body,
                headers={"content-type": "application/json"},
            )
        return Response(
            answer.content,
            status_code=answer.status_code,
            media_type=answer.headers.get("content-type"),
        )

    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.naive_proxy", description=__doc__)
    parser.add_argument("--upstream", required=True, help="backend base URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(
        create_app(args.upstream.rstrip("/")),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
