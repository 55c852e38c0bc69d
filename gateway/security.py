"""Who is calling: API keys with per-key rate limits, and the client address behind proxies.

Keys are kept only as SHA-256 digests and compared in constant time; a key
never appears in a log line or an error body (a key is named by the first 8
hex digits of its digest).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from pathlib import Path

from backends.clock import Clock
from gateway.errors import GatewayError, UnauthorizedError
from gateway.settings import GatewaySettings


class RateLimitedError(GatewayError):
    status = 429
    kind = "rate_limited"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def load_keys(settings: GatewaySettings) -> list[str]:
    """Keys from settings and from `api_keys_file` (one a line, '#' comments, blanks ignored)."""
    keys = [k for k in settings.api_keys if k]
    if settings.api_keys_file:
        for line in Path(settings.api_keys_file).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(line)
    return keys


class TokenBucket:
    __slots__ = ("burst", "rate_per_s", "tokens", "updated")

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.tokens = float(burst)
        self.updated = now

    def take(self, now: float) -> float:
        """0.0 if a token was taken, else seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate_per_s)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s


class ApiKeys:
    """Authenticates `Authorization: Bearer <key>` (or `X-API-Key`) and rate-limits per key."""

    def __init__(self, keys: list[str], settings: GatewaySettings, clock: Clock) -> None:
        self._digests = [_digest(k) for k in keys]
        self._clock = clock
        self._rate = settings.api_key_rate_per_s
        self._burst = settings.api_key_burst
        self._buckets: dict[bytes, TokenBucket] = {}

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: str | None, x_api_key: str | None) -> str | None:
        """The caller's key id, or None when auth is off.

        Raises UnauthorizedError (401) or RateLimitedError (429, with Retry-After).
        """
        if not self._digests:
            return None
        given = x_api_key or ""
        if authorization and authorization[:7].lower() == "bearer ":
            given = authorization[7:].strip()
        if not given:
            raise UnauthorizedError("an API key is required (Authorization: Bearer <key>)")
        digest = _digest(given)
        # Compare against every key so timing does not tell how many matched or where.
        match = None
        for known in self._digests:
            if hmac.compare_digest(digest, known):
                match = known
        if match is None:
            raise UnauthorizedError("the API key is not valid")
        now = self._clock.now()
        bucket = self._buckets.get(match)
        if bucket is None:
            bucket = self._buckets[match] = TokenBucket(self._rate, self._burst, now)
        wait_s = bucket.take(now)
        if wait_s > 0:
            raise RateLimitedError(
                "rate limit for this API key exceeded", retry_after_s=max(1, math.ceil(wait_s))
            )
        return match.hex()[:8]


def client_address(forwarded_for: str | None, peer: str | None, trusted_proxies: int) -> str:
    """The client's address: the right-most entry not added by one of our trusted proxies.

    Behind an ALB (`trusted_proxies=1`) the ALB appends the address it saw, so
    the client is the last entry of X-Forwarded-For; entries to the left of it
    come from the client and cannot be trusted.
    """
    if trusted_proxies <= 0 or not forwarded_for:
        return peer or "unknown"
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    # The peer is the nearest trusted proxy; the list holds the hops before it.
    index = len(hops) - (trusted_proxies - 1) - 1
    if index < 0:
        return hops[0] if hops else (peer or "unknown")
    return hops[index]
