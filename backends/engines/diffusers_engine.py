"""Stable Diffusion (1.x, 2.x, XL) with diffusers on CUDA or CPU, from a local directory.

`build` runs before the server opens its port: it checks the model directory
(a diffusers pipeline saved with `save_pretrained`: `model_index.json`, each
component's config and weights, safetensors headers), imports torch and
diffusers, and resolves the device, dtype and scheduler; any problem raises
EngineUnavailableError saying what to fix. Nothing is fetched from a hub:
loading passes `local_files_only=True` and `HF_HUB_OFFLINE` defaults to 1.

`load` reads the weights and runs one short warm-up generation at the model's
native size, so the first request does not pay for lazy initialisation.
Each slot has a thread of its own and a pipeline view of its own (shared
weights, its own scheduler, which holds per-call state); generation and PNG
encoding run there, never on the event loop. A request's `n` images are one
batched pipeline call; image i uses a CPU generator seeded `seed + i`.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.engines.base import (
    Capabilities,
    EngineError,
    GenerationRequest,
    GenerationResult,
)
from backends.engines.pipelines import (
    ModelDirError,
    SlotThreads,
    check_safetensors,
    encode_images,
    generators,
    new_seed,
    read_json,
    resolve_scheduler,
)
from backends.factory import BuiltEngine, EngineUnavailableError, resolve_profile
from backends.profiles import AcceleratorProfile
from backends.settings import ServerSettings

log = logging.getLogger("backends.engines.diffusers")

INSTALL_HINT = (
    "install torch for this machine first (`pip install torch==2.13.0` for the CPU build, "
    "or a CUDA build), then `pip install 'sd-gateway[diffusers]'`"
)

# The pipelines this engine serves, with the components each must have on disk.
_SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
REQUIRED_COMPONENTS: dict[str, tuple[str, ...]] = {
    "StableDiffusionPipeline": _SD_COMPONENTS,
    "StableDiffusionXLPipeline": (*_SD_COMPONENTS, "text_encoder_2", "tokenizer_2"),
}
# Components whose folder holds `config.json` and weights (checked to the safetensors header).
_MODEL_COMPONENTS = {"unet", "vae", "text_encoder", "text_encoder_2", "safety_checker"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin")

WARMUP_STEPS = 2
DEFAULT_GUIDANCE_SCALE = 7.5


@dataclass(frozen=True, slots=True)
class ModelDir:
    """A checked diffusers pipeline directory."""

    path: Path
    pipeline_class: str
    native_side_px: int  # the UNet's training resolution (512 for SD 1.5, 1024 for SDXL)
    variant: str | None  # weights variant to load ("fp16") when only that one is present


def _weight_variants(files: list[Path]) -> set[str | None]:
    """The weight variants present: None for plain weights, else e.g. 'fp16'."""
    variants: set[str | None] = set()
    for f in files:
        stem = f.name.removesuffix(f.suffix)
        # `model.safetensors`, `model-00001-of-00002.safetensors`, `model.fp16.safetensors`,
        # `model.fp16-00001-of-00002.safetensors`
        parts = stem.split(".", 1)
        variants.add(parts[1].split("-", 1)[0] if len(parts) == 2 else None)
    return variants


def _check_component(root: Path, name: str) -> set[str | None]:
    """Raise ModelDirError unless component `name` is on disk; returns its weight variants."""
    folder = root / name
    if not folder.is_dir():
        raise ModelDirError(
            f"component {name!r} is listed in model_index.json but {folder} is missing"
        )
    if name == "scheduler":
        read_json(folder / "scheduler_config.json")
    elif name.startswith("tokenizer") and not any(folder.iterdir()):
        raise ModelDirError(f"tokenizer folder {folder} is empty")
    elif name in _MODEL_COMPONENTS:
        read_json(folder / "config.json")
        weights = sorted(p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES)
        if not weights:
            raise ModelDirError(f"{folder} has no weights (*.safetensors or *.bin)")
        for path in weights:
            if path.suffix == ".safetensors":
                check_safetensors(path)
        return _weight_variants(weights)
    return set()


def inspect_model_dir(path: Path) -> ModelDir:
    """Check that `path` holds a Stable Diffusion pipeline diffusers can load offline.

    Raises ModelDirError saying what is missing or malformed.
    """
    if not path.exists():
        raise ModelDirError(f"model directory {path} does not exist")
    if not path.is_dir():
        raise ModelDirError(f"model path {path} is not a directory")
    if not (path / "model_index.json").is_file():
        raise ModelDirError(
            f"{path} is not a diffusers pipeline directory: no model_index.json "
            "(save one with `pipeline.save_pretrained(DIR)`)"
        )
    index = read_json(path / "model_index.json")
    cls = index.get("_class_name")
    if cls not in REQUIRED_COMPONENTS:
        raise ModelDirError(
            f"{path}: pipeline class {cls!r} is not served here; supported: "
            + ", ".join(REQUIRED_COMPONENTS)
        )
    listed = sorted(
        name
        for name, value in index.items()
        if not name.startswith("_")
        and isinstance(value, list)
        and len(value) == 2
        and value[1] is not None
    )
    missing = [name for name in REQUIRED_COMPONENTS[cls] if name not in listed]
    if missing:
        raise ModelDirError(f"{path}/model_index.json lacks components: {', '.join(missing)}")
    # A component with only variant weights (`*.fp16.safetensors`) loads only with that variant.
    needed: list[set[str]] = []
    for name in listed:
        found = _check_component(path, name)
        if found and None not in found:
            needed.append({v for v in found if v})
    variant = None
    if needed:
        common = set.intersection(*needed)
        if not common:
            raise ModelDirError(f"{path}: components have weights only in different variants")
        variant = sorted(common)[0]
    unet = read_json(path / "unet" / "config.json")
    vae = read_json(path / "vae" / "config.json")
    sample = unet.get("sample_size")
    blocks = vae.get("block_out_channels")
    scale = 2 ** (len(blocks) - 1) if isinstance(blocks, list) and blocks else 8
    native = sample * scale if isinstance(sample, int) else 512
    return ModelDir(path=path, pipeline_class=cls, native_side_px=native, variant=variant)


@dataclass(frozen=True, slots=True)
class DiffusersOptions:
    """How to load and run one model: resolved device, dtype and limits."""

    model: ModelDir
    device: str  # "cuda" or "cpu"
    dtype: str  # "float16", "bfloat16" or "float32"
    scheduler: str | None  # a diffusers scheduler class name; None keeps the model's
    max_batch: int
    max_side_px: int
    default_steps: int
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    warmup_steps: int = WARMUP_STEPS


class DiffusersEngine:
    """An `Engine` running a diffusers Stable Diffusion pipeline, one thread per slot."""

    name = "diffusers"

    def __init__(
        self, options: DiffusersOptions, profile: AcceleratorProfile, *, slots: int
    ) -> None:
        self.options = options
        self.profile = profile
        self._threads: SlotThreads[Any] = SlotThreads(slots, "diffusers")
        self._caps = Capabilities(
            engine=self.name,
            accelerator=profile.accelerator,
            shapes=None,
            max_batch=options.max_batch,
            max_width=options.max_side_px,
            max_height=options.max_side_px,
            default_steps=options.default_steps,
            expected_latency_s=profile.latency_s,
            price_per_hour_usd=profile.price_per_hour_usd,
            extra={
                "profile": profile.name,
                "model": str(options.model.path),
                "pipeline": options.model.pipeline_class,
                "device": options.device,
                "dtype": options.dtype,
                "scheduler": options.scheduler or "model default",
                "native_shape": f"{options.model.native_side_px}x{options.model.native_side_px}",
            },
        )
        self.load_s: float | None = None
        self.warmup_s: float | None = None
        self.pipeline_calls = 0  # warm-up included; a request is one call whatever its `n`

    def capabilities(self) -> Capabilities:
        return self._caps

    async def load(self) -> None:
        """Load the weights onto the device and warm up; raises EngineError."""
        started = time.perf_counter()
        try:
            pipelines = await self._threads.call(0, self._load_pipelines)
        except Exception as exc:
            raise EngineError(
                f"cannot load {self.options.model.path}: {type(exc).__name__}: {exc}"
            ) from exc
        self._threads.install(pipelines)
        self.load_s = time.perf_counter() - started
        side = min(self.options.model.native_side_px, self.options.max_side_px)
        warmup = GenerationRequest(
            prompt="warm-up", width=side, height=side, steps=self.options.warmup_steps, seed=0
        )
        started = time.perf_counter()
        await self._threads.run(functools.partial(self._generate_sync, request=warmup, seed=0))
        self.warmup_s = time.perf_counter() - started
        log.info(
            "loaded %s on %s/%s in %.1f s, warm-up %.2f s",
            self.options.model.path,
            self.options.device,
            self.options.dtype,
            self.load_s,
            self.warmup_s,
        )

    def _load_pipelines(self) -> list[Any]:
        """The pipeline on its device, then one view of it for each further slot."""
        pipe = self._load_pipeline()
        return [pipe] + [self._view(pipe) for _ in range(self._threads.slots - 1)]

    def _load_pipeline(self) -> Any:
        import torch

        # Untyped on purpose: diffusers' loaders are untyped calls to mypy --strict.
        diffusers: Any = importlib.import_module("diffusers")

        opts = self.options
        kwargs: dict[str, Any] = {
            "local_files_only": True,
            "torch_dtype": getattr(torch, opts.dtype),
        }
        if opts.model.variant:
            kwargs["variant"] = opts.model.variant
        if opts.model.pipeline_class == "StableDiffusionPipeline":
            # No safety checker is loaded; say so rather than have diffusers warn on every start.
            kwargs["requires_safety_checker"] = False
        with warnings.catch_warnings():
            # Every supported diffusers takes `torch_dtype`; the newest prefer `dtype` and warn.
            warnings.filterwarnings("ignore", message=".*`dtype`.*", category=FutureWarning)
            pipe = diffusers.DiffusionPipeline.from_pretrained(str(opts.model.path), **kwargs)
        if opts.scheduler is not None:
            cls = resolve_scheduler(diffusers, opts.scheduler)
            pipe.scheduler = cls.from_config(pipe.scheduler.config)
        pipe = pipe.to(opts.device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @staticmethod
    def _view(pipe: Any) -> Any:
        """A pipeline sharing `pipe`'s modules with a scheduler of its own."""
        scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        params = inspect.signature(type(pipe).__init__).parameters
        # Settings such as `requires_safety_checker` live in the config, not in `components`.
        settings = {
            k: v for k, v in pipe.config.items() if k in params and k not in pipe.components
        }
        view = type(pipe)(**pipe.components | {"scheduler": scheduler}, **settings)
        view.set_progress_bar_config(disable=True)
        return view

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        self._caps.check(request)
        seed = request.seed if request.seed is not None else new_seed()
        images, seconds = await self._threads.run(
            functools.partial(self._generate_sync, request=request, seed=seed)
        )
        return GenerationResult(images_png=images, inference_seconds=seconds, seed=seed)

    def _generate_sync(
        self, pipe: Any, *, request: GenerationRequest, seed: int
    ) -> tuple[tuple[bytes, ...], float]:
        """Run on a slot thread: one pipeline call for all `n` images, then PNG encoding."""
        import torch

        opts = self.options
        kwargs: dict[str, Any] = {
            "prompt": request.prompt,
            "width": request.width,
            "height": request.height,
            "num_inference_steps": request.steps or opts.default_steps,
            "guidance_scale": (
                request.guidance_scale
                if request.guidance_scale is not None
                else opts.guidance_scale
            ),
            "num_images_per_prompt": request.n,
            "generator": generators(torch, seed, request.n),
            "output_type": "np",
        }
        if request.negative_prompt:
            kwargs["negative_prompt"] = request.negative_prompt
        self.pipeline_calls += 1
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                output = pipe(**kwargs)
        except Exception as exc:
            if opts.device == "cuda" and isinstance(exc, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            raise EngineError(f"generation failed: {type(exc).__name__}: {exc}") from exc
        # `output_type="np"` copied the images to host memory, so the device work is done.
        seconds = time.perf_counter() - started
        return encode_images(output.images), seconds

    async def close(self) -> None:
        self._threads.close()


def _import_stack() -> tuple[Any, Any]:
    try:
        import torch
    except ImportError as exc:
        raise EngineUnavailableError(
            f"the diffusers engine needs torch ({exc}); {INSTALL_HINT}"
        ) from exc
    try:
        diffusers = importlib.import_module("diffusers")
    except ImportError as exc:
        raise EngineUnavailableError(
            f"the diffusers engine needs diffusers and transformers ({exc}); {INSTALL_HINT}"
        ) from exc
    return torch, diffusers


def _resolve_device(torch: Any, wanted: str) -> str:
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if wanted == "cuda" and not torch.cuda.is_available():
        built_for = torch.version.cuda or "no CUDA (a CPU build)"
        raise EngineUnavailableError(
            f"--device cuda, but torch {torch.__version__} sees no CUDA device "
            f"(built for {built_for}); install a CUDA build of torch or use --device cpu"
        )
    return wanted


def build(settings: ServerSettings, profile: AcceleratorProfile) -> BuiltEngine:
    """A DiffusersEngine for `settings.model`; raises EngineUnavailableError saying what to fix."""
    if not settings.model:
        raise EngineUnavailableError(
            "the diffusers engine needs --model DIR, a local diffusers pipeline directory"
        )
    try:
        model = inspect_model_dir(Path(settings.model).expanduser())
    except ModelDirError as exc:
        raise EngineUnavailableError(str(exc)) from exc
    # Read by huggingface_hub at import: set before the first import of diffusers.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch, diffusers = _import_stack()
    device = _resolve_device(torch, settings.device)
    dtype = (
        settings.dtype
        if settings.dtype != "auto"
        else ("float16" if device == "cuda" else "float32")
    )
    scheduler = None
    if settings.scheduler:
        try:
            scheduler = resolve_scheduler(diffusers, settings.scheduler).__name__
        except ValueError as exc:
            raise EngineUnavailableError(str(exc)) from exc
    if settings.profile is None and device == "cpu":
        profile = resolve_profile(settings, "cpu")
    options = DiffusersOptions(
        model=model,
        device=device,
        dtype=dtype,
        scheduler=scheduler,
        max_batch=settings.max_batch or profile.max_batch,
        max_side_px=settings.max_side_px,
        default_steps=profile.reference_steps,
    )
    engine = DiffusersEngine(options, profile, slots=profile.slots)
    return BuiltEngine(engine, profile.slots, profile.latency_s)
