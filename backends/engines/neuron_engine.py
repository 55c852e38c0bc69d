"""Stable Diffusion compiled for AWS Inferentia2 / Trainium, run with optimum-neuron.

`--model` is a pipeline compiled by optimum-neuron (`optimum-cli export neuron
--model ... --batch_size 1 --height 512 --width 512 DIR`, or
`NeuronStableDiffusionPipeline.from_pretrained(..., export=True).save_pretrained(DIR)`):
`model_index.json`, and per component a `config.json` and a `model.neuron`.
The compiled shape is fixed; `build` reads it from the UNet's config (its
`neuron` section: latent `static_height`/`static_width`, `static_batch_size`
images per call, `dynamic_batch_size`) times the VAE's scale factor, before the
port opens, so `/v1/capabilities` advertises exactly what the artefact runs and
any other shape is refused with 422.

The Neuron SDK is imported only here, and only when this engine is asked for:
where it is missing, `build` raises EngineUnavailableError saying what to install.
One compiled pipeline runs one call at a time, on one dedicated thread.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import time
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
    encode_images,
    generators,
    new_seed,
    read_json,
    resolve_scheduler,
    scheduler_class_name,
)
from backends.factory import BuiltEngine, EngineUnavailableError
from backends.profiles import AcceleratorProfile
from backends.schemas import MAX_IMAGES
from backends.settings import ServerSettings

log = logging.getLogger("backends.engines.neuron")

INSTALL_HINT = (
    "the neuron engine needs the AWS Neuron SDK (torch-neuronx, neuronx-cc) and "
    "optimum-neuron: on an Inferentia2 or Trainium host with the Neuron driver, "
    "`pip install 'optimum-neuron[neuronx]'` with the Neuron pip repository configured, "
    "or build docker/Dockerfile.neuron"
)

NEURON_FILE = "model.neuron"
WARMUP_STEPS = 2
DEFAULT_GUIDANCE_SCALE = 7.5


@dataclass(frozen=True, slots=True)
class CompiledPipeline:
    """What a compiled artefact runs, read from its config files."""

    path: Path
    pipeline_class: str  # model_index.json `_class_name`
    xl: bool
    height: int
    width: int
    batch_size: int  # images per pipeline call (the UNet's static batch)
    prompts_per_call: int  # the text encoder's static batch
    dynamic_batch: bool
    compiler_version: str | None

    @property
    def shape(self) -> str:
        return f"{self.width}x{self.height}"


def _static(neuron: dict[str, Any], key: str, where: Path) -> int:
    value = neuron.get(f"static_{key}")
    if not isinstance(value, int) or value <= 0:
        raise ModelDirError(f"{where}: `neuron.static_{key}` is missing or not a positive integer")
    return value


def read_compiled_pipeline(path: Path) -> CompiledPipeline:
    """Check a compiled artefact and read its shape and batch; raises ModelDirError."""
    if not path.exists():
        raise ModelDirError(f"model directory {path} does not exist")
    if not path.is_dir():
        raise ModelDirError(f"model path {path} is not a directory")
    index = read_json(path / "model_index.json")
    cls = str(index.get("_class_name", ""))
    if "StableDiffusion" not in cls:
        raise ModelDirError(f"{path}: pipeline class {cls!r} is not a Stable Diffusion pipeline")
    xl = "XL" in cls or "text_encoder_2" in index
    for component in ("unet", "text_encoder", "vae_decoder"):
        if not (path / component / NEURON_FILE).is_file():
            raise ModelDirError(
                f"{path} is not a compiled Neuron pipeline: {component}/{NEURON_FILE} is missing "
                "(compile one with `optimum-cli export neuron`)"
            )
    unet_config_path = path / "unet" / "config.json"
    neuron = read_json(unet_config_path).get("neuron")
    if not isinstance(neuron, dict):
        raise ModelDirError(
            f"{unet_config_path} has no `neuron` section: not compiled by optimum-neuron, "
            "or by a release too old to record its shapes"
        )
    vae = read_json(path / "vae_decoder" / "config.json")
    blocks = vae.get("block_out_channels")
    scale = 2 ** (len(blocks) - 1) if isinstance(blocks, list) and blocks else 8
    batch = _static(neuron, "batch_size", unet_config_path)
    text_neuron = read_json(path / "text_encoder" / "config.json").get("neuron")
    prompts = text_neuron.get("static_batch_size", 1) if isinstance(text_neuron, dict) else 1
    if not isinstance(prompts, int) or prompts < 1 or batch % prompts:
        prompts = 1
    return CompiledPipeline(
        path=path,
        pipeline_class=cls,
        xl=xl,
        height=_static(neuron, "height", unet_config_path) * scale,
        width=_static(neuron, "width", unet_config_path) * scale,
        batch_size=batch,
        prompts_per_call=prompts,
        dynamic_batch=bool(neuron.get("dynamic_batch_size", False)),
        compiler_version=neuron.get("compiler_version"),
    )


class NeuronEngine:
    """An `Engine` running an optimum-neuron Stable Diffusion pipeline on NeuronCores."""

    name = "neuron"

    def __init__(
        self,
        compiled: CompiledPipeline,
        profile: AcceleratorProfile,
        *,
        max_batch: int,
        default_steps: int,
        scheduler: str | None = None,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        warmup_steps: int = WARMUP_STEPS,
    ) -> None:
        self.compiled = compiled
        self.profile = profile
        self.scheduler = scheduler
        self.guidance_scale = guidance_scale
        self.warmup_steps = warmup_steps
        self.default_steps = default_steps
        self._threads: SlotThreads[Any] = SlotThreads(1, "neuron")
        self._caps = Capabilities(
            engine=self.name,
            accelerator=profile.accelerator,
            shapes=(compiled.shape,),
            max_batch=max_batch,
            max_width=compiled.width,
            max_height=compiled.height,
            default_steps=default_steps,
            expected_latency_s=profile.latency_s,
            price_per_hour_usd=profile.price_per_hour_usd,
            extra={
                "profile": profile.name,
                "model": str(compiled.path),
                "pipeline": compiled.pipeline_class,
                "compiled_batch_size": compiled.batch_size,
                "dynamic_batch_size": compiled.dynamic_batch,
                "compiler_version": compiled.compiler_version,
                "scheduler": scheduler or "model default",
            },
        )
        self.load_s: float | None = None
        self.warmup_s: float | None = None
        self.pipeline_calls = 0  # warm-up included; a request is one call whatever its `n`

    def capabilities(self) -> Capabilities:
        return self._caps

    async def load(self) -> None:
        """Load the compiled pipeline onto the NeuronCores and warm up; raises EngineError."""
        started = time.perf_counter()
        try:
            pipe = await self._threads.call(0, self._load_pipeline)
        except Exception as exc:
            raise EngineError(
                f"cannot load {self.compiled.path}: {type(exc).__name__}: {exc}"
            ) from exc
        self._threads.install([pipe])
        self.load_s = time.perf_counter() - started
        warmup = GenerationRequest(
            prompt="warm-up",
            width=self.compiled.width,
            height=self.compiled.height,
            steps=self.warmup_steps,
        )
        started = time.perf_counter()
        await self._threads.run(functools.partial(self._generate_sync, request=warmup, seed=0))
        self.warmup_s = time.perf_counter() - started
        log.info(
            "loaded %s (%s, batch %d) in %.1f s, warm-up %.2f s",
            self.compiled.path,
            self.compiled.shape,
            self.compiled.batch_size,
            self.load_s,
            self.warmup_s,
        )

    def _load_pipeline(self) -> Any:
        neuron: Any = importlib.import_module("optimum.neuron")
        cls_name = (
            "NeuronStableDiffusionXLPipeline"
            if self.compiled.xl
            else "NeuronStableDiffusionPipeline"
        )
        pipe = getattr(neuron, cls_name).from_pretrained(
            str(self.compiled.path), local_files_only=True
        )
        if self.scheduler is not None:
            cls = resolve_scheduler(importlib.import_module("diffusers"), self.scheduler)
            pipe.scheduler = cls.from_config(pipe.scheduler.config)
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)
        return pipe

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
        """One pipeline call on the engine thread; returns `n` PNGs and the call's seconds.

        A statically compiled pipeline makes exactly its compiled batch per call:
        the call asks for that many and the first `n` are kept.
        """
        import torch

        c = self.compiled
        if c.dynamic_batch:
            prompts, per_prompt = 1, request.n
        else:
            prompts, per_prompt = c.prompts_per_call, c.batch_size // c.prompts_per_call
        kwargs: dict[str, Any] = {
            "prompt": request.prompt if prompts == 1 else [request.prompt] * prompts,
            "num_inference_steps": request.steps or self.default_steps,
            "guidance_scale": (
                request.guidance_scale
                if request.guidance_scale is not None
                else self.guidance_scale
            ),
            "num_images_per_prompt": per_prompt,
            "generator": generators(torch, seed, prompts * per_prompt),
            "output_type": "np",
        }
        if request.negative_prompt:
            kwargs["negative_prompt"] = (
                request.negative_prompt if prompts == 1 else [request.negative_prompt] * prompts
            )
        self.pipeline_calls += 1
        started = time.perf_counter()
        try:
            output = pipe(**kwargs)
        except Exception as exc:
            raise EngineError(f"generation failed: {type(exc).__name__}: {exc}") from exc
        seconds = time.perf_counter() - started
        return encode_images(list(output.images)[: request.n]), seconds

    async def close(self) -> None:
        self._threads.close()


def _import_sdk() -> None:
    try:
        importlib.import_module("optimum.neuron")
    except ImportError as exc:
        raise EngineUnavailableError(f"{INSTALL_HINT} ({exc})") from exc


def build(settings: ServerSettings, profile: AcceleratorProfile) -> BuiltEngine:
    """A NeuronEngine for the compiled pipeline in `settings.model`.

    Raises EngineUnavailableError when the Neuron SDK is missing or the
    artefact is not a compiled pipeline.
    """
    if not settings.model:
        raise EngineUnavailableError(
            "the neuron engine needs --model DIR, a pipeline compiled by optimum-neuron"
        )
    # Read by huggingface_hub at import: set before the SDK imports it.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _import_sdk()
    try:
        compiled = read_compiled_pipeline(Path(settings.model).expanduser())
    except ModelDirError as exc:
        raise EngineUnavailableError(str(exc)) from exc
    scheduler = None
    if settings.scheduler:
        try:
            scheduler = scheduler_class_name(settings.scheduler)
        except ValueError as exc:
            raise EngineUnavailableError(str(exc)) from exc
    # A static artefact makes exactly its compiled batch per call; a dynamic one runs
    # larger batches in compiled-size chunks.
    dynamic_max = settings.max_batch or MAX_IMAGES
    max_batch = dynamic_max if compiled.dynamic_batch else compiled.batch_size
    engine = NeuronEngine(
        compiled,
        profile,
        max_batch=max_batch,
        default_steps=profile.reference_steps,
        scheduler=scheduler,
    )
    # One compiled pipeline runs one call at a time: slots beyond one only queue in the engine.
    return BuiltEngine(engine, profile.slots, profile.latency_s)
