"""The gateway's exceptions, one tree, each mapped once to an HTTP status and body type."""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway answers a client with."""

    status = 500
    kind = "internal_error"

    def __init__(self, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class InvalidRequestError(GatewayError):
    status = 422
    kind = "invalid_request"


class PayloadTooLargeError(GatewayError):
    status = 413
    kind = "payload_too_large"


class RequestTimeoutError(GatewayError):
    status = 408
    kind = "request_timeout"


class UnauthorizedError(GatewayError):
    status = 401
    kind = "unauthorized"


class NotFoundError(GatewayError):
    status = 404
    kind = "not_found"


class NoCapacityError(GatewayError):
    """No pool can take the request now (503, with Retry-After)."""

    status = 503
    kind = "no_capacity"


class ShedError(NoCapacityError):
    """Batch work refused to keep room for interactive work (429, with Retry-After)."""

    status = 429
    kind = "shed"


class UpstreamError(GatewayError):
    """Every attempt failed at the backends (502)."""

    status = 502
    kind = "upstream_error"


class UpstreamTimeoutError(UpstreamError):
    status = 504
    kind = "upstream_timeout"
