"""Locust users for the gateway: interactive people and batch jobs generating images.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8080
    loadtest/run-locust.sh          # headless, against `sd-gateway demo`, bounded

`InteractiveUser` (3 of 4 users) sends one image at a time with
`X-Priority: interactive`, 10 to 20 steps, mostly 512x512 and 15 % 768x768,
now and then through the OpenAI-style alias; a person waits 2 to 6 s between
prompts. `BatchUser` sends 2 to 4 images per request with `X-Priority: batch`,
20 to 30 steps, 30 % 768x768; a `429` with `Retry-After` is the gateway
deferring batch work while capacity is short, which the contract allows: it
counts as a success ("deferred"). Any other non-200 is a failure, including
an interactive `503` when the gateway sheds work it predicts will miss the
class objective by far (the demo's 2 s objective and single-slot replicas
set how heavy a mix it can take: more steps, more 768x768 or more users
turn into such 503s).

Every answer's `X-Gateway-Pool` and `X-Image-Cost-USD` (per image) are
tallied; at test stop each locust process prints the share of images per
pool and the total and mean cost, and writes them as JSON to
`$LOCUST_TALLY_JSON` when that is set.
"""

from __future__ import annotations

import json
import os
import random
import threading
from collections import Counter, defaultdict
from typing import Any

from locust import FastHttpUser, between, events, task

PROMPTS = (
    "a lighthouse on a cliff at dusk, dramatic clouds, oil painting",
    "portrait of an old fisherman, rembrandt lighting, 85mm",
    "isometric cutaway of a cozy bookshop, warm light, highly detailed",
    "a red fox curled up in fresh snow, telephoto, morning light",
    "futuristic tram in a rainy neon city at night, cinematic",
    "watercolor map of an imaginary archipelago, muted colors",
    "a bowl of ramen on a wooden table, studio photo, shallow depth of field",
    "art deco poster of a zeppelin over new york, limited palette",
    "macro photo of a dew-covered spider web at sunrise",
    "a medieval castle made of glass in a desert, matte painting",
)
NEGATIVE = ("blurry, low quality", "text, watermark", None, None)
# (share of 768x768, step counts) per class; pools compiled for 512x512 cannot take 768x768.
INTERACTIVE_MIX = (0.15, (10, 15, 20))
BATCH_MIX = (0.3, (20, 25, 30))


class Tally:
    """Images and cost per pool, per user class; thread-safe enough for gevent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.images: Counter[str] = Counter()
        self.cost_usd: defaultdict[str, float] = defaultdict(float)
        self.by_class: Counter[str] = Counter()
        self.deferred = 0

    def add(self, user_class: str, pool: str, images: int, cost_per_image_usd: float) -> None:
        with self._lock:
            self.images[pool] += images
            self.cost_usd[pool] += images * cost_per_image_usd
            self.by_class[user_class] += images

    def defer(self) -> None:
        with self._lock:
            self.deferred += 1

    def report(self) -> dict[str, Any]:
        total_images = sum(self.images.values())
        total_cost = sum(self.cost_usd.values())
        return {
            "images": total_images,
            "images_by_class": dict(self.by_class),
            "pool_share": {
                pool: round(n / total_images, 4) for pool, n in self.images.most_common()
            }
            if total_images
            else {},
            "cost_usd": round(total_cost, 8),
            "cost_per_1k_images_usd": round(1000 * total_cost / total_images, 6)
            if total_images
            else None,
            "batch_deferred": self.deferred,
        }


TALLY = Tally()


def image_body(rng: random.Random, n: int, mix: tuple[float, tuple[int, ...]]) -> dict[str, Any]:
    large_share, steps = mix
    side = 768 if rng.random() < large_share else 512
    body: dict[str, Any] = {
        "prompt": rng.choice(PROMPTS),
        "width": side,
        "height": side,
        "steps": rng.choice(steps),
        "guidance_scale": rng.choice((6.0, 7.5)),
        "seed": rng.randrange(2**31),
        "n": n,
    }
    negative = rng.choice(NEGATIVE)
    if negative is not None:
        body["negative_prompt"] = negative
    return body


def _tally(user_class: str, response: Any, images: int) -> str | None:
    """Record a 200's pool and cost; returns a failure message for a malformed answer."""
    pool = response.headers.get("X-Gateway-Pool")
    cost = response.headers.get("X-Image-Cost-USD")
    if pool is None or cost is None:
        return "200 without X-Gateway-Pool or X-Image-Cost-USD"
    try:
        TALLY.add(user_class, pool, images, float(cost))
    except ValueError:
        return f"X-Image-Cost-USD is not a number: {cost!r}"
    return None


class InteractiveUser(FastHttpUser):
    """A person at a prompt box: one image, waits for it, thinks, asks again."""

    weight = 3
    wait_time = between(2.0, 6.0)

    def on_start(self) -> None:
        self.rng = random.Random()

    @task(9)
    def generate(self) -> None:
        body = image_body(self.rng, 1, INTERACTIVE_MIX)
        name = f"/v1/images [{body['width']}x{body['height']} interactive]"
        with self.client.post(
            "/v1/images",
            json=body,
            headers={"X-Priority": "interactive"},
            name=name,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
            elif (problem := _tally("interactive", response, 1)) is not None:
                response.failure(problem)

    @task(1)
    def generate_openai(self) -> None:
        body = image_body(self.rng, 1, INTERACTIVE_MIX)
        payload = {
            "prompt": body["prompt"],
            "n": 1,
            "size": f"{body['width']}x{body['height']}",
            "response_format": "b64_json",
        }
        with self.client.post(
            "/v1/images/generations",
            json=payload,
            headers={"X-Priority": "interactive"},
            name=f"/v1/images/generations [{payload['size']}]",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
            elif (problem := _tally("interactive", response, 1)) is not None:
                response.failure(problem)


class BatchUser(FastHttpUser):
    """A batch job: several images per request, deferred politely when shed."""

    weight = 1
    wait_time = between(2.0, 5.0)

    def on_start(self) -> None:
        self.rng = random.Random()

    @task
    def generate_batch(self) -> None:
        n = self.rng.randint(2, 4)
        body = image_body(self.rng, n, BATCH_MIX)
        name = f"/v1/images [{body['width']}x{body['height']} batch]"
        with self.client.post(
            "/v1/images",
            json=body,
            headers={"X-Priority": "batch"},
            name=name,
            catch_response=True,
        ) as response:
            if response.status_code == 429 and response.headers.get("Retry-After"):
                TALLY.defer()
                response.success()
            elif response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
            elif (problem := _tally("batch", response, n)) is not None:
                response.failure(problem)


@events.test_stop.add_listener  # type: ignore[untyped-decorator]
def _report(**_: Any) -> None:
    report = TALLY.report()
    print("\n== gateway tally (this locust process)")
    print(f"images {report['images']} {report['images_by_class']}")
    print(
        "pool share " + (", ".join(f"{p} {s:.1%}" for p, s in report["pool_share"].items()) or "-")
    )
    per_1k = report["cost_per_1k_images_usd"]
    print(
        f"cost ${report['cost_usd']:.6f} in all, "
        + (f"${per_1k:.4f} per 1k images" if per_1k is not None else "no images")
        + f"; batch requests deferred {report['batch_deferred']}",
        flush=True,
    )
    path = os.environ.get("LOCUST_TALLY_JSON")
    if path:
        with open(path, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)
