"""Hostile input against a running gateway: always a clear 4xx JSON error, never a 500."""

from __future__ import annotations

import random

from loadtest.stack import start_stack

NESTED = b'{"prompt": "x", "seed": ' + b"[" * 5000 + b"]" * 5000 + b"}"


CASES: list[tuple[str, bytes, dict[str, str | bytes], int]] = [
    ("invalid-utf8", b'{"prompt": "\xff\xfe bad utf-8"}', {}, 422),
    ("huge-number", b'{"prompt": "x", "width": 1000000000000000000000000000000}', {}, 422),
    ("negative-size", b'{"prompt": "x", "width": -512}', {}, 422),
    ("negative-n", b'{"prompt": "x", "n": -1}', {}, 422),
    ("nan", b'{"prompt": "x", "guidance_scale": NaN}', {}, 422),
    ("overflowing-float", b'{"prompt": "x", "guidance_scale": 1e400}', {}, 422),
    ("deeply-nested", NESTED, {}, 422),
    ("operator-object", b'{"prompt": {"$gt": ""}}', {}, 422),
    ("null-prompt", b'{"prompt": null}', {}, 422),
    ("nul-bytes", b"\x00" * 64, {}, 422),
    ("odd-content-type", b'{"prompt": "x"}', {"Content-Type": "text/plain"}, 200),
    ("non-ascii-priority", b'{"prompt": "x"}', {"X-Priority": b"urg\xc3\xa9nt"}, 422),
    ("overlong-request-id", b'{"prompt": "x"}' + b" " * 10, {"X-Request-ID": "a" * 500}, 200),
]


async def test_hostile_bodies_and_headers() -> None:
    async with start_stack() as stack:
        for name, body, headers, status in CASES:
            r = await stack.client.post("/v1/images", content=body, headers=headers)
            assert r.status_code == status, name
            if status != 200:
                assert set(r.json()["error"]) == {"type", "message"}, name
            assert len(r.headers["X-Request-ID"]) <= 128, name


async def test_random_mutations_never_produce_a_500() -> None:
    rng = random.Random(20261125)
    seeds = [
        b'{"prompt": "a cat", "width": 512, "height": 512, "n": 1, "steps": 10, "seed": 3}',
        b'{"prompt": "x", "size": "768x768", "n": 2, "response_format": "b64_json"}',
    ]
    statuses: list[int] = []
    async with start_stack() as stack:
        for i in range(300):
            body = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 6)):
                op = rng.random()
                pos = rng.randrange(len(body) + 1)
                if op < 0.4 and body:
                    body[min(pos, len(body) - 1)] = rng.randrange(256)
                elif op < 0.7:
                    body[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
                elif body:
                    del body[pos : pos + rng.randint(1, 8)]
            path = "/v1/images" if i % 2 else "/v1/images/generations"
            r = await stack.client.post(path, content=bytes(body))
            statuses.append(r.status_code)
            assert r.status_code < 500 or r.status_code == 503, (bytes(body), r.text)
            if r.status_code != 200:
                assert set(r.json()["error"]) == {"type", "message"}
    assert statuses.count(422) > 100  # most mutations are invalid
