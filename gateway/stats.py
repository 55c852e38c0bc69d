"""Running statistics on an injected clock: EWMA and windowed rates.

Nothing here reads the time itself: callers pass `now` (seconds on the
clock's scale), so tests move time by hand.
"""

from __future__ import annotations

import collections
import math


class Ewma:
    """Exponentially weighted moving average seeded with a prior.

    `value` is the prior until the first sample; `samples` counts updates.
    Samples above the average move it with `alpha_up` (at least `alpha`), so
    a slowdown shows within a few completions while a speed-up is trusted
    more slowly.
    """

    __slots__ = ("alpha", "alpha_up", "samples", "value")

    def __init__(self, prior: float, alpha: float = 0.2, alpha_up: float = 0.5) -> None:
        if not 0 < alpha <= 1 or not 0 < alpha_up <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.value = prior
        self.alpha = alpha
        self.alpha_up = max(alpha, alpha_up)
        self.samples = 0

    def update(self, sample: float) -> float:
        if not math.isfinite(sample):
            return self.value
        if self.samples == 0:
            # The first measurement replaces the prior only half way: one sample is noisy.
            self.value = (self.value + sample) / 2
        else:
            alpha = self.alpha_up if sample > self.value else self.alpha
            self.value += alpha * (sample - self.value)
        self.samples += 1
        return self.value


class WindowCounter:
    """Events per second over a sliding window, in one-second buckets.

    `add(now, n)` records `n` events at `now`; `rate(now)` is the count in the
    last `window_s` seconds divided by the window (or by the time observed,
    if shorter, so a new counter is not biased low; but never by less than
    `min_span_s`, so a burst in the first second is not read as a rate).
    """

    __slots__ = ("_buckets", "_started", "min_span_s", "window_s")

    def __init__(self, window_s: float = 10.0, min_span_s: float = 1.0) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.window_s = window_s
        self.min_span_s = min(max(min_span_s, 1e-9), window_s)
        self._buckets: collections.deque[list[float]] = collections.deque()  # [second, count]
        self._started: float | None = None

    def add(self, now: float, n: float = 1.0) -> None:
        if self._started is None:
            self._started = now
        second = math.floor(now)
        buckets = self._buckets
        if buckets and buckets[-1][0] == second:
            # Old buckets can wait for the next new one: count() trims before it sums.
            buckets[-1][1] += n
            return
        buckets.append([second, n])
        self._trim(now)

    def count(self, now: float) -> float:
        self._trim(now)
        return sum(c for _, c in self._buckets)

    def rate(self, now: float) -> float:
        if self._started is None:
            return 0.0
        span = min(self.window_s, max(self.min_span_s, now - self._started))
        return self.count(now) / span

    def _trim(self, now: float) -> None:
        horizon = now - self.window_s
        while self._buckets and self._buckets[0][0] + 1 <= horizon:
            self._buckets.popleft()
