"""The request path: decide, forward, classify the answer, fail over.

`Router.route` takes a validated request and returns a `Routed` response
whose body streams from the chosen backend. Before any byte reaches the
client, a connect error, a timeout before the response, a capacity answer
(429, 503) or a server error moves the request to the best other feasible
pool, at most `max_attempts` in all and within the retry budget.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from backends.clock import Clock
from backends.schemas import ImageRequest
from gateway.admission import RetryBudget, slo_seconds
from gateway.errors import (
    GatewayError,
    InvalidRequestError,
    NoCapacityError,
    ShedError,
    UpstreamError,
    UpstreamTimeoutError,
)
from gateway.health import Failure, HealthTracker
from gateway.metrics import GatewayMetrics
from gateway.pools import PoolRegistry, PoolState, ReplicaState
from gateway.proxy import (
    ConnectError,
    Transport,
    UpstreamResponse,
    UpstreamTimeout,
    response_headers,
)
from gateway.scheduling.policy import Policy
from gateway.scheduling.types import Priority, RequestProfile
from gateway.settings import GatewaySettings

log = logging.getLogger("gateway.router")

# Retry-After for shed batch work: about the time the control loop needs to see a change.
SHED_RETRY_AFTER_S = 5


@dataclass
class Routed:
    """A response ready to send: status, headers, and a body to stream once."""

    status: int
    headers: dict[str, str]
    body: AsyncIterator[bytes]
    pool: str
    attempts: int
    close: Callable[[], None] = lambda: None  # idempotent; frees the upstream connection


@dataclass
class _Attempt:
    """What one upstream attempt produced: a response to send, or a failure."""

    response: Routed | None = None
    failure: Failure | None = None
    retry_after_s: int | None = None
    upstream_s: float = 0.0
    detail: str = ""


@dataclass
class _Trace:
    attempts: int = 0
    upstream_s: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    retry_after_s: list[int] = field(default_factory=list)


def classify(status: int, body: bytes) -> Failure | None:
    """The kind of failure an upstream status means, or None if it is the client's answer."""
    if status == 429:
        return Failure.CAPACITY
    if status == 422 and b"unsupported_request" in body[:512]:
        return Failure.UNSUPPORTED
    if status == 503:
        text = body[:512].lower()
        if b"capacity" in text or b"queue" in text:
            return Failure.CAPACITY
        return Failure.NOT_READY
    if status >= 500 or 300 <= status < 400:  # redirects are never followed
        return Failure.SERVER_ERROR
    return None


def _retry_after(headers: Any) -> int | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0, int(float(value)))
    except ValueError:
        return None


class Router:
    """Routes image requests across pools; one per gateway worker."""

    def __init__(
        self,
        *,
        settings: GatewaySettings,
        registry: PoolRegistry,
        health: HealthTracker,
        policy: Callable[[], Policy],
        transport: Transport,
        metrics: GatewayMetrics,
        clock: Clock,
        batch_admit: Callable[[], float] = lambda: 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.batch_admit = batch_admit
        self.rng = rng or random.Random(settings.seed)
        self.registry = registry
        self.health = health
        self.policy = policy
        self.transport = transport
        self.metrics = metrics
        self.clock = clock
        self.budget = RetryBudget(
            settings.retry_budget_ratio,
            settings.retry_budget_min_per_s,
            window_s=settings.rate_window_s,
            clock=clock,
        )

    def profile(self, image: ImageRequest, priority: Priority) -> RequestProfile:
        return RequestProfile(
            width=image.width,
            height=image.height,
            n=image.n,
            steps=image.steps,
            priority=priority,
            slo_s=slo_seconds(self.settings, priority),
        )

    async def route(
        self,
        image: ImageRequest,
        priority: Priority,
        request_id: str,
        received_at: float,
        forwarded: Mapping[str, str] | None = None,
    ) -> Routed:
        """Serve `image`; raises a GatewayError subclass when no pool can."""
        profile = self.profile(image, priority)
        self._check_servable(profile)
        self.registry.record_arrival(priority, image.n, profile.shape, profile.size)
        if priority is Priority.BATCH and self.rng.random() >= self.batch_admit():
            self.metrics.shed.labels(priority.value, "shortfall").inc()
            raise ShedError(
                "batch work is deferred while capacity is short", retry_after_s=SHED_RETRY_AFTER_S
            )
        trace = _Trace()
        self.budget.start_request()
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                routed = await self._attempts(image, profile, request_id, trace, forwarded or {})
        except TimeoutError:
            raise UpstreamTimeoutError(
                f"no backend answered within {self.settings.request_timeout_s:g} s"
            ) from None
        finally:
            self.budget.end_request()
        overhead = (time.perf_counter() - received_at) - trace.upstream_s
        self.metrics.overhead.observe(max(0.0, overhead))
        return routed

    def _check_servable(self, profile: RequestProfile) -> None:
        """Raise InvalidRequestError (422) when no pool could ever run this request."""
        served = []
        for pool in self.registry:
            shapes, batch = pool.effective_shapes(), pool.max_batch()
            if (shapes is None or profile.shape in shapes) and (
                batch is None or profile.n <= batch
            ):
                return
            served.append(
                f"{pool.name}: {', '.join(sorted(shapes)) if shapes else 'any shape'}"
                + (f", n <= {batch}" if batch is not None else "")
            )
        raise InvalidRequestError(
            f"no pool runs {profile.shape} with n={profile.n}; pools serve " + "; ".join(served)
        )

    async def _attempts(
        self,
        image: ImageRequest,
        profile: RequestProfile,
        request_id: str,
        trace: _Trace,
        forwarded: Mapping[str, str],
    ) -> Routed:
        excluded: set[str] = set()
        policy = self.policy()
        counted = 0  # attempts that count against max_attempts and the retry budget
        while counted < self.settings.max_attempts:
            if counted > 0 and not self.budget.try_retry():
                self.metrics.retry_budget_exhausted.inc()
                break
            decision = policy.decide(
                profile,
                self.registry.snapshot(profile.priority, profile.shape),
                frozenset(excluded),
            )
            if decision is None:
                break
            if (
                not decision.meets_slo
                and decision.replica_completion_s
                > self.settings.overload_slo_factor * profile.slo_s
            ):
                # Overloaded everywhere: refuse now rather than queue work that will be late.
                trace.retry_after_s.append(max(1, math.ceil(decision.replica_completion_s)))
                trace.failures.append(Failure.CAPACITY)
                self.metrics.shed.labels(profile.priority.value, "overload").inc()
                break
            pool = self.registry.get(decision.pool)
            replica = pool.replicas[decision.replica]
            trace.attempts += 1
            outcome = await self._attempt(
                pool, replica, image, profile, request_id, trace, forwarded
            )
            # A pool that cannot run the request at all costs nothing to skip.
            counted += outcome.failure is not Failure.UNSUPPORTED
            trace.upstream_s += outcome.upstream_s
            if outcome.response is not None:
                return outcome.response
            assert outcome.failure is not None
            trace.failures.append(outcome.failure)
            if outcome.retry_after_s is not None:
                trace.retry_after_s.append(outcome.retry_after_s)
            self.metrics.failovers.labels(pool.name, outcome.failure.value).inc()
            excluded.add(pool.name)
        raise self._no_answer(profile, trace)

    def _no_answer(self, profile: RequestProfile, trace: _Trace) -> GatewayError:
        retry_after = min(trace.retry_after_s, default=1) or 1
        failures = set(trace.failures)
        if failures == {Failure.UNSUPPORTED}:
            return InvalidRequestError(
                f"no pool can run this request ({profile.shape}, n={profile.n})"
            )
        if failures and failures <= {Failure.SERVER_ERROR, Failure.TIMEOUT}:
            if failures == {Failure.TIMEOUT}:
                return UpstreamTimeoutError("the backends did not answer in time")
            return UpstreamError(
                f"the backends failed this request ({trace.attempts} attempts)",
                retry_after_s=retry_after,
            )
        message = "no pool has capacity for this request now"
        if profile.priority is Priority.BATCH:
            return ShedError(message + " (batch work is shed first)", retry_after_s=retry_after)
        return NoCapacityError(message, retry_after_s=retry_after)

    async def _attempt(
        self,
        pool: PoolState,
        replica: ReplicaState,
        image: ImageRequest,
        profile: RequestProfile,
        request_id: str,
        trace: _Trace,
        forwarded: Mapping[str, str],
    ) -> _Attempt:
        now = self.clock.now()
        pool.requests.add(now)
        replica.in_flight += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                replica.in_flight -= 1

        started = time.perf_counter()
        try:
            if pool.config.protocol == "genimage":
                return await self._attempt_genimage(
                    pool, replica, image, profile.size, trace, started, release
                )
            headers = {
                "Content-Type": "application/json",
                "Accept": "application/json",
                "X-Request-ID": request_id,
                "X-Priority": profile.priority.value,
                **forwarded,
            }
            body = orjson.dumps(image.model_dump(exclude_none=True))
            resp = await self.transport.post(
                replica.url + "/v1/images", body, headers, self._read_timeout(pool)
            )
        except (ConnectError, UpstreamTimeout) as exc:
            release()
            return self._transport_failure(pool, replica, exc, started)
        except BaseException:
            release()
            raise
        if resp.status >= 500 or resp.status in (422, 429) or 300 <= resp.status < 400:
            try:
                body = await resp.read()
            except Exception:
                body = b""
            finally:
                resp.close()
                release()
            if resp.status == 422 and classify(422, body) is None:
                # The client's own mistake, caught by the backend: answer it as is.
                return _Attempt(
                    response=Routed(
                        422,
                        {"content-type": "application/json", "content-length": str(len(body))},
                        _once(body),
                        pool.name,
                        trace.attempts,
                    )
                )
            failed = self._failed(pool, replica, resp.status, resp.headers, body)
            failed.upstream_s = time.perf_counter() - started
            return failed
        upstream_s = time.perf_counter() - started
        self._record_success(pool, replica, resp.headers, profile.n, upstream_s, profile.size)
        headers = response_headers(resp.headers)
        headers.update(self._gateway_headers(pool, trace, resp.headers, profile.n))
        self.metrics.attempt(pool.name, "ok")

        def close() -> None:
            resp.close()
            release()

        return _Attempt(
            response=Routed(
                status=resp.status,
                headers=headers,
                body=_stream(resp, release, lambda: self._broken_stream(pool, replica)),
                pool=pool.name,
                attempts=trace.attempts,
                close=close,
            ),
            upstream_s=upstream_s,
        )

    def _failed(
        self, pool: PoolState, replica: ReplicaState, status: int, headers: Any, body: bytes
    ) -> _Attempt:
        """Account a failure status from `replica` and describe it."""
        failure = classify(status, body) or Failure.SERVER_ERROR
        retry_after = _retry_after(headers)
        self.health.record_failure(replica, failure, f"HTTP {status}")
        if failure is Failure.CAPACITY and retry_after:
            self.health.note_retry_after(replica, retry_after)
        self.metrics.attempt(pool.name, failure.value)
        return _Attempt(failure=failure, retry_after_s=retry_after, detail=f"HTTP {status}")

    def _broken_stream(self, pool: PoolState, replica: ReplicaState) -> None:
        log.warning("the body from %s broke off mid-stream", replica.url)
        # As unambiguous as a refused connection: take the replica out at once.
        self.health.record_failure(replica, Failure.CONNECT, "body broke off")
        self.metrics.attempt(pool.name, "broken_body")

    def _transport_failure(
        self, pool: PoolState, replica: ReplicaState, exc: Exception, started: float
    ) -> _Attempt:
        failure = Failure.CONNECT if isinstance(exc, ConnectError) else Failure.TIMEOUT
        self.health.record_failure(replica, failure, str(exc))
        self.metrics.attempt(pool.name, failure.value)
        return _Attempt(failure=failure, upstream_s=time.perf_counter() - started, detail=str(exc))

    def _record_success(
        self,
        pool: PoolState,
        replica: ReplicaState,
        headers: Any,
        n: int,
        upstream_s: float,
        size: float = 1.0,
    ) -> float:
        """Feed the latency estimates (`size`: pixels per image / 512x512); seconds per image."""
        now = self.clock.now()
        inference = headers.get("X-Inference-Seconds")
        try:
            service_s = float(inference) if inference is not None else upstream_s
        except ValueError:
            service_s = upstream_s
        per_image_s = service_s / max(1, n)
        pool.record_latency(per_image_s, size, now)
        pool.completions.add(now, n)
        depth = headers.get("X-Queue-Depth")
        if depth is not None and depth.isdigit():
            replica.reported_queue_depth = int(depth)
        self.health.record_success(replica)
        return per_image_s

    def _gateway_headers(
        self, pool: PoolState, trace: _Trace, upstream: Any, n: int
    ) -> dict[str, str]:
        inference = upstream.get("X-Inference-Seconds")
        try:
            per_image_s = float(inference) / max(1, n) if inference else pool.latency.value
        except ValueError:
            per_image_s = pool.latency.value
        cost = pool.price_per_hour_usd * per_image_s / (3600.0 * pool.config.slots_per_replica)
        return {
            "X-Gateway-Pool": pool.name,
            "X-Gateway-Attempts": str(trace.attempts),
            "X-Image-Cost-USD": f"{cost:.8f}",
        }

    def _read_timeout(self, pool: PoolState) -> float:
        return pool.config.read_timeout_s or self.settings.read_timeout_s

    async def _attempt_genimage(
        self,
        pool: PoolState,
        replica: ReplicaState,
        image: ImageRequest,
        size: float,
        trace: _Trace,
        started: float,
        release: Callable[[], None],
    ) -> _Attempt:
        """Speak the sample servers' `POST /genimage {prompt}`: one call per image, buffered.

        `size`: pixels per image relative to 512x512, for the latency estimates.
        """
        url = replica.url + "/genimage"
        body = orjson.dumps({"prompt": image.prompt})
        timeout = self._read_timeout(pool)
        try:
            answers = await asyncio.gather(
                *(self._genimage_once(url, body, timeout) for _ in range(image.n))
            )
        except (ConnectError, UpstreamTimeout) as exc:
            return self._transport_failure(pool, replica, exc, started)
        finally:
            release()
        upstream_s = time.perf_counter() - started
        for status, headers, raw in answers:
            if status >= 500 or status == 429:
                failed = self._failed(pool, replica, status, headers, raw)
                failed.upstream_s = upstream_s
                return failed
        try:
            parsed = [orjson.loads(raw) for _, _, raw in answers]
            images = [{"b64_json": str(p["response"])} for p in parsed]
            latency_s = sum(float(p.get("latency", 0.0)) for p in parsed) or upstream_s
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            self.health.record_failure(replica, Failure.SERVER_ERROR, "malformed genimage answer")
            self.metrics.attempt(pool.name, "server_error")
            return _Attempt(failure=Failure.SERVER_ERROR, upstream_s=upstream_s)
        upstream_headers = {"X-Inference-Seconds": f"{latency_s:.6f}"}
        self._record_success(pool, replica, upstream_headers, image.n, upstream_s, size)
        self.metrics.attempt(pool.name, "ok")
        payload: dict[str, Any] = {
            "created": int(time.time()),
            "data": images,
            "inference_seconds": round(latency_s, 6),
            "engine": "genimage",
            "accelerator": pool.config.accelerator,
        }
        data = orjson.dumps(payload)
        headers = {"content-type": "application/json", "content-length": str(len(data))}
        headers |= upstream_headers | self._gateway_headers(pool, trace, upstream_headers, image.n)
        return _Attempt(
            response=Routed(200, headers, _once(data), pool.name, trace.attempts),
            upstream_s=upstream_s,
        )

    async def _genimage_once(
        self, url: str, body: bytes, timeout_s: float
    ) -> tuple[int, Mapping[str, str], bytes]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        resp = await self.transport.post(url, body, headers, timeout_s)
        try:
            return resp.status, dict(resp.headers), await resp.read()
        finally:
            resp.close()


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _stream(
    resp: UpstreamResponse, release: Callable[[], None], on_broken: Callable[[], None]
) -> AsyncIterator[bytes]:
    """The upstream body, chunk by chunk; a body cut short counts against the replica."""
    try:
        async for chunk in resp.chunks():
            yield chunk
    except Exception:
        # Bytes already went to the client: nothing can be retried. The client sees
        # the connection end early; the replica is charged with a failure.
        on_broken()
        raise
    finally:
        resp.close()
        release()
