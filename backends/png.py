"""A minimal PNG writer and a deterministic picture for the simulated engine.

No imaging library needed: an RGB PNG is a signature, an IHDR chunk, zlib-
compressed scanlines in IDAT chunks, and IEND, each chunk CRC-checked.
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_rgb(width: int, height: int, rgb: bytes) -> bytes:
    """Encode `rgb` (width*height*3 bytes, row-major) as an 8-bit RGB PNG."""
    if width <= 0 or height <= 0:
        raise ValueError("width and height must be positive")
    stride = width * 3
    if len(rgb) != stride * height:
        raise ValueError(f"expected {stride * height} bytes of RGB, got {len(rgb)}")
    # Filter type 0 (None) on every scanline.
    raw = b"".join(b"\x00" + rgb[y * stride : (y + 1) * stride] for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


def decode_size(png: bytes) -> tuple[int, int]:
    """Width and height of a PNG; raises ValueError if it is not one."""
    if not png.startswith(PNG_SIGNATURE) or png[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", png[16:24])
    return int(width), int(height)


def render_preview(prompt: str, seed: int, width: int, height: int) -> bytes:
    """A deterministic PNG for (prompt, seed): a two-colour gradient with ripples.

    The picture is 1/8 of the requested size in each dimension (the size of
    Stable Diffusion's latent), at least 8x8, so it stays small on the wire.
    """
    w, h = max(8, width // 8), max(8, height // 8)
    digest = hashlib.blake2b(f"{seed}\x00{prompt}".encode(), digest_size=16).digest()
    a = digest[0:3]
    b = digest[3:6]
    angle = digest[6] / 255.0 * math.tau
    freq = 1 + digest[7] % 6
    dx, dy = math.cos(angle), math.sin(angle)
    norm = abs(dx) * w + abs(dy) * h or 1.0
    rows = []
    for y in range(h):
        row = bytearray(w * 3)
        for x in range(w):
            t = ((x * dx + y * dy) % norm) / norm
            ripple = 0.5 + 0.5 * math.sin(freq * math.tau * (x / w + y / h))
            mix = 0.7 * t + 0.3 * ripple
            i = x * 3
            row[i] = int(a[0] + (b[0] - a[0]) * mix) & 0xFF
            row[i + 1] = int(a[1] + (b[1] - a[1]) * mix) & 0xFF
            row[i + 2] = int(a[2] + (b[2] - a[2]) * mix) & 0xFF
        rows.append(bytes(row))
    return encode_rgb(w, h, b"".join(rows))
