"""What the real engines share: slot threads, seeds, schedulers and PNG encoding.

Nothing here imports torch or diffusers at module level; callers pass the
modules in, so `--engine sim` runs without them.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, TypeVar

from backends.png import encode_rgb

T = TypeVar("T")
R = TypeVar("R")

# Short names for the diffusers schedulers worth serving with; a full class
# name (`EulerDiscreteScheduler`) is accepted too.
SCHEDULERS: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "lcm": "LCMScheduler",
}


class ModelDirError(ValueError):
    """A model directory that is missing or not what the engine can load; says why."""


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; raises ModelDirError naming the file when it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelDirError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelDirError(f"{path} is not a JSON object")
    return data


def check_safetensors(path: Path) -> None:
    """Raise ModelDirError unless `path` has a sound safetensors header and full length.

    Reads only the header: 8 bytes of little-endian length, then a JSON table
    whose largest data offset must end exactly at the end of the file.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelDirError(f"{path} is truncated (no safetensors header)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            raise ModelDirError(f"{path} is truncated or not a safetensors file")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ModelDirError(f"{path} has a corrupt safetensors header") from None
    if not isinstance(header, dict):
        raise ModelDirError(f"{path} has a corrupt safetensors header")
    ends = [
        int(v["data_offsets"][1])
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v
    ]
    if 8 + header_len + max(ends, default=0) != size:
        raise ModelDirError(f"{path} is truncated: its header describes a different length")


def scheduler_class_name(name: str) -> str:
    """The diffusers class for a short name (`euler`) or a class name; raises ValueError."""
    if name.lower() in SCHEDULERS:
        return SCHEDULERS[name.lower()]
    if name.isidentifier() and name.endswith("Scheduler"):
        return name
    raise ValueError(
        f"unknown scheduler {name!r}; use one of {', '.join(SCHEDULERS)} "
        "or a diffusers scheduler class name"
    )


def resolve_scheduler(diffusers: Any, name: str) -> Any:
    """The scheduler class named `name` in the `diffusers` module; raises ValueError."""
    class_name = scheduler_class_name(name)
    cls = getattr(diffusers, class_name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ValueError(
            f"scheduler {class_name!r} is not in this diffusers ({diffusers.__version__}); "
            f"use one of {', '.join(SCHEDULERS)}"
        )
    return cls


def new_seed() -> int:
    """A seed for a request that gave none; returned to the client so it can repeat it."""
    return secrets.randbits(32)


def generators(torch: Any, seed: int, count: int) -> list[Any]:
    """One CPU generator per image, seeded `seed`, `seed + 1`, ...

    CPU generators draw the same noise on every device, so a seed gives the
    same latents on a GPU, a CPU or a Neuron host; image i of a batch depends
    only on `seed + i`.
    """
    return [torch.Generator(device="cpu").manual_seed(seed + i) for i in range(count)]


def encode_images(images: Any) -> tuple[bytes, ...]:
    """PNG bytes for each image of a batch.

    `images` is what a pipeline returns with `output_type="np"`: floats in
    [0, 1] shaped (n, height, width, 3); uint8 arrays and PIL images work too.
    """
    import numpy as np

    batch = np.stack([np.asarray(img) for img in images])
    if batch.dtype != np.uint8:
        batch = (np.clip(batch, 0.0, 1.0) * 255).round().astype(np.uint8)
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(f"expected RGB images shaped (n, h, w, 3), got {batch.shape}")
    return tuple(
        encode_rgb(int(img.shape[1]), int(img.shape[0]), np.ascontiguousarray(img).tobytes())
        for img in batch
    )


class SlotThreads(Generic[T]):
    """One dedicated thread per slot, each owning one state object (a pipeline).

    `run(fn)` waits for a free slot and calls `fn(state)` on that slot's thread,
    off the event loop. A slot runs one call at a time: if a caller is
    cancelled, its call still finishes before the thread takes the next one.
    """

    def __init__(self, slots: int, name: str) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self._executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-slot{i}")
            for i in range(slots)
        ]
        self._states: list[T] = []
        self._free: asyncio.Queue[int] = asyncio.Queue()

    @property
    def slots(self) -> int:
        return len(self._executors)

    async def call(self, slot: int, fn: Callable[[], R]) -> R:
        """Run `fn()` on the given slot's thread (for loading, before `install`)."""
        return await asyncio.get_running_loop().run_in_executor(self._executors[slot], fn)

    def install(self, states: Sequence[T]) -> None:
        """Give each slot its state; `run` may be called from then on."""
        if len(states) != self.slots:
            raise ValueError(f"expected {self.slots} states, got {len(states)}")
        self._states = list(states)
        self._free = asyncio.Queue()
        for i in range(self.slots):
            self._free.put_nowait(i)

    async def run(self, fn: Callable[[T], R]) -> R:
        """`fn(state)` on the next free slot's thread."""
        if not self._states:
            raise RuntimeError("no pipeline loaded")
        slot = await self._free.get()
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executors[slot], fn, self._states[slot])
        finally:
            self._free.put_nowait(slot)

    def close(self) -> None:
        """Stop taking work; a call already running finishes in the background."""
        self._states = []
        for executor in self._executors:
            executor.shutdown(wait=False, cancel_futures=True)
