"""The Neuron engine against a fake `optimum.neuron` that records its calls.

The fake SDK loads "compiled" artefacts written here (the config files
optimum-neuron writes, with placeholder `model.neuron` files) and its
pipeline draws images from the generators it is given, so seeds, batch
handling and shapes are checked without the Neuron SDK or hardware.
"""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from pathlib import Path
from typing import Any

import httpx
import pytest

from backends import cli
from backends.engines.base import GenerationRequest, UnsupportedRequestError
from backends.engines.neuron_engine import NeuronEngine, read_compiled_pipeline
from backends.factory import EngineUnavailableError, build_engine
from backends.png import decode_size
from backends.server import create_app
from backends.settings import ServerSettings


def write_artefact(
    root: Path,
    *,
    height: int = 64,
    width: int = 64,
    batch: int = 1,
    prompts: int = 1,
    xl: bool = False,
    dynamic: bool = False,
) -> Path:
    """A directory shaped like `optimum-cli export neuron` output (placeholder NEFFs)."""
    root.mkdir(parents=True)
    cls = "StableDiffusionXLPipeline" if xl else "StableDiffusionPipeline"
    index: dict[str, Any] = {
        "_class_name": cls,
        "unet": ["optimum", "NeuronModelUnet"],
        "text_encoder": ["optimum", "NeuronModelTextEncoder"],
        "vae_decoder": ["optimum", "NeuronModelVaeDecoder"],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
    }
    if xl:
        index["text_encoder_2"] = ["optimum", "NeuronModelTextEncoder"]
    (root / "model_index.json").write_text(json.dumps(index))

    def component(name: str, config: dict[str, Any]) -> None:
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(config))
        (root / name / "model.neuron").write_bytes(b"NEFF placeholder")

    common = {"compiler_type": "neuronx-cc", "compiler_version": "2.15.0", "auto_cast": "matmul"}
    component(
        "unet",
        {
            "sample_size": 64,
            "neuron": common
            | {
                "static_batch_size": batch,
                "static_height": height // 8,
                "static_width": width // 8,
                "static_num_channels": 4,
                "static_sequence_length": 77,
                "dynamic_batch_size": dynamic,
            },
        },
    )
    component(
        "text_encoder",
        {"neuron": common | {"static_batch_size": prompts, "static_sequence_length": 77}},
    )
    component("vae_decoder", {"block_out_channels": [128, 256, 512, 512], "neuron": common})
    return root


class FakePipeline:
    """Stands for a loaded optimum-neuron pipeline: records calls, makes seeded images."""

    def __init__(self, path: Path) -> None:
        neuron = json.loads((path / "unet" / "config.json").read_text())["neuron"]
        self.height = neuron["static_height"] * 8
        self.width = neuron["static_width"] * 8
        self.scheduler = types.SimpleNamespace(
            config={"num_train_timesteps": 1000, "beta_schedule": "scaled_linear"}
        )
        self.calls: list[dict[str, Any]] = []

    def set_progress_bar_config(self, **_: Any) -> None:
        return None

    def __call__(self, **kwargs: Any) -> Any:
        import numpy as np
        import torch

        self.calls.append(kwargs)
        prompts = kwargs["prompt"]
        count = (1 if isinstance(prompts, str) else len(prompts)) * kwargs["num_images_per_prompt"]
        generators = kwargs["generator"]
        assert len(generators) == count
        images = np.stack(
            [torch.rand((self.height, self.width, 3), generator=g).numpy() for g in generators]
        )
        return types.SimpleNamespace(images=images)


@pytest.fixture
def needs_torch() -> None:
    """Skip where torch is missing: the engine seeds torch generators, the fake returns numpy."""
    pytest.importorskip("numpy", reason="the fake Neuron pipeline returns numpy images")
    pytest.importorskip("torch", reason="the Neuron engine seeds torch generators")


@pytest.fixture
def sdk(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A fake `optimum.neuron` in sys.modules; `sdk.loads` records `from_pretrained` calls."""
    module = types.ModuleType("optimum.neuron")
    loads: list[tuple[str, str, dict[str, Any]]] = []
    pipelines: list[FakePipeline] = []

    class NeuronStableDiffusionPipeline:
        @classmethod
        def from_pretrained(cls, model_id: str, **kwargs: Any) -> FakePipeline:
            loads.append((cls.__name__, model_id, kwargs))
            pipelines.append(FakePipeline(Path(model_id)))
            return pipelines[-1]

    class NeuronStableDiffusionXLPipeline(NeuronStableDiffusionPipeline):
        pass

    module.NeuronStableDiffusionPipeline = NeuronStableDiffusionPipeline  # type: ignore[attr-defined]
    module.NeuronStableDiffusionXLPipeline = NeuronStableDiffusionXLPipeline  # type: ignore[attr-defined]
    module.loads = loads  # type: ignore[attr-defined]
    module.pipelines = pipelines  # type: ignore[attr-defined]
    parent = types.ModuleType("optimum")
    # Libraries probe for optimum with importlib.util.find_spec, which needs a spec.
    parent.__spec__ = importlib.machinery.ModuleSpec("optimum", None, is_package=True)
    module.__spec__ = importlib.machinery.ModuleSpec("optimum.neuron", None)
    monkeypatch.setitem(sys.modules, "optimum", parent)
    monkeypatch.setitem(sys.modules, "optimum.neuron", module)
    return module


def neuron_engine(model: Path, **options: Any) -> NeuronEngine:
    built = build_engine(ServerSettings(engine="neuron", model=str(model), **options))
    assert isinstance(built.engine, NeuronEngine)
    return built.engine


@pytest.mark.parametrize(
    ("artefact", "shape", "max_batch"),
    [
        ({}, "64x64", 1),
        ({"height": 512, "width": 512}, "512x512", 1),
        ({"height": 768, "width": 512, "batch": 2}, "512x768", 2),
        ({"height": 1024, "width": 1024, "xl": True}, "1024x1024", 1),
        ({"batch": 2, "dynamic": True}, "64x64", 4),
    ],
    ids=["tiny", "sd-512", "portrait-batch2", "sdxl", "dynamic"],
)
def test_capabilities_come_from_the_compiled_artefact(
    sdk: types.ModuleType, tmp_path: Path, artefact: dict[str, Any], shape: str, max_batch: int
) -> None:
    engine = neuron_engine(write_artefact(tmp_path / "m", **artefact))
    caps = engine.capabilities()
    assert caps.shapes == (shape,)
    assert caps.max_batch == max_batch
    assert f"{caps.max_width}x{caps.max_height}" == shape
    assert (caps.engine, caps.accelerator) == ("neuron", "inf2.xlarge")
    assert caps.extra["compiler_version"] == "2.15.0"
    assert sdk.loads == []  # nothing is loaded before `load`


@pytest.mark.parametrize(("xl", "cls"), [(False, ""), (True, "XL")], ids=["sd", "sdxl"])
@pytest.mark.usefixtures("needs_torch")
async def test_load_opens_the_artefact_offline_and_warms_up(
    sdk: types.ModuleType, tmp_path: Path, xl: bool, cls: str
) -> None:
    model = write_artefact(tmp_path / "m", xl=xl)
    engine = neuron_engine(model)
    await engine.load()
    assert sdk.loads == [
        (f"NeuronStableDiffusion{cls}Pipeline", str(model), {"local_files_only": True})
    ]
    [warmup] = sdk.pipelines[0].calls
    assert warmup["num_inference_steps"] == 2 and "height" not in warmup
    assert engine.warmup_s is not None and engine.pipeline_calls == 1
    await engine.close()


@pytest.mark.usefixtures("needs_torch")
async def test_static_batch_makes_the_compiled_batch_and_keeps_n(
    sdk: types.ModuleType, tmp_path: Path
) -> None:
    engine = neuron_engine(write_artefact(tmp_path / "m", batch=2))
    await engine.load()
    request = GenerationRequest(prompt="a cat", width=64, height=64, n=1, seed=5, steps=3)
    first = await engine.generate(request)
    again = await engine.generate(request)
    other = await engine.generate(GenerationRequest(prompt="a cat", width=64, height=64, seed=6))
    both = await engine.generate(
        GenerationRequest(prompt="a cat", width=64, height=64, n=2, seed=5)
    )
    call = sdk.pipelines[0].calls[1]
    assert (call["prompt"], call["num_images_per_prompt"], call["num_inference_steps"]) == (
        "a cat",
        2,
        3,
    )
    assert call["output_type"] == "np" and len(call["generator"]) == 2
    assert len(first.images_png) == 1 and decode_size(first.images_png[0]) == (64, 64)
    assert first.images_png == again.images_png != other.images_png
    assert both.images_png[0] == first.images_png[0] and len(set(both.images_png)) == 2
    assert first.seed == 5 and first.inference_seconds > 0
    await engine.close()


@pytest.mark.usefixtures("needs_torch")
async def test_text_encoder_batch_repeats_the_prompt(sdk: types.ModuleType, tmp_path: Path) -> None:
    engine = neuron_engine(write_artefact(tmp_path / "m", batch=4, prompts=2))
    await engine.load()
    request = GenerationRequest(prompt="p", negative_prompt="blur", width=64, height=64, n=3)
    result = await engine.generate(request)
    call = sdk.pipelines[0].calls[-1]
    assert call["prompt"] == ["p", "p"] and call["negative_prompt"] == ["blur", "blur"]
    assert call["num_images_per_prompt"] == 2
    assert len(result.images_png) == 3
    await engine.close()


@pytest.mark.usefixtures("needs_torch")
async def test_dynamic_batch_asks_for_exactly_n(sdk: types.ModuleType, tmp_path: Path) -> None:
    engine = neuron_engine(write_artefact(tmp_path / "m", dynamic=True))
    await engine.load()
    result = await engine.generate(GenerationRequest(prompt="p", width=64, height=64, n=3))
    assert sdk.pipelines[0].calls[-1]["num_images_per_prompt"] == 3
    assert len(result.images_png) == 3
    await engine.close()


@pytest.mark.usefixtures("needs_torch")
async def test_other_shape_gets_422_naming_the_compiled_one(
    sdk: types.ModuleType, tmp_path: Path
) -> None:
    settings = ServerSettings(engine="neuron", model=str(write_artefact(tmp_path / "m")))
    built = build_engine(settings)
    app = create_app(built.engine, settings, slots=built.slots, prior_service_s=0.67)
    await app.state.runtime.load()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://neuron") as c:
        caps = (await c.get("/v1/capabilities")).json()
        wrong = await c.post("/v1/images", json={"prompt": "x", "width": 512, "height": 512})
        right = await c.post("/v1/images", json={"prompt": "x", "width": 64, "height": 64})
    assert caps["shapes"] == ["64x64"] and caps["max_batch"] == 1
    assert wrong.status_code == 422
    assert "supported shapes: 64x64" in wrong.json()["error"]["message"]
    assert right.status_code == 200 and float(right.headers["X-Inference-Seconds"]) > 0
    with pytest.raises(UnsupportedRequestError):
        built.engine.capabilities().check(GenerationRequest(prompt="x", width=64, height=64, n=2))
    await built.engine.close()


@pytest.fixture
def diffusers() -> types.ModuleType:
    """diffusers, imported before the fake SDK exists so that it caches no trace of it."""
    return pytest.importorskip("diffusers", reason="schedulers come from diffusers")


@pytest.mark.usefixtures("needs_torch")
async def test_scheduler_is_swapped_from_the_pipelines_config(
    diffusers: types.ModuleType, sdk: types.ModuleType, tmp_path: Path
) -> None:
    engine = neuron_engine(write_artefact(tmp_path / "m"), scheduler="dpmpp_2m")
    await engine.load()
    scheduler = sdk.pipelines[0].scheduler
    assert type(scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert scheduler.config.beta_schedule == "scaled_linear"
    await engine.close()


def _no_unet_neff(root: Path) -> None:
    (root / "unet" / "model.neuron").unlink()


def _no_neuron_section(root: Path) -> None:
    (root / "unet" / "config.json").write_text('{"sample_size": 64}')


def _no_height(root: Path) -> None:
    config = json.loads((root / "unet" / "config.json").read_text())
    del config["neuron"]["static_height"]
    (root / "unet" / "config.json").write_text(json.dumps(config))


def _not_sd(root: Path) -> None:
    (root / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_no_unet_neff, "unet/model.neuron is missing"),
        (_no_neuron_section, "has no `neuron` section"),
        (_no_height, "`neuron.static_height` is missing"),
        (_not_sd, "'FluxPipeline' is not a Stable Diffusion pipeline"),
    ],
    ids=["no-neff", "no-neuron-section", "no-height", "not-sd"],
)
def test_malformed_artefact_is_refused_at_build(
    sdk: types.ModuleType, tmp_path: Path, damage: Any, message: str
) -> None:
    model = write_artefact(tmp_path / "m")
    damage(model)
    with pytest.raises(EngineUnavailableError, match=message.replace("(", r"\(")):
        build_engine(ServerSettings(engine="neuron", model=str(model)))


def test_read_compiled_pipeline_scales_latents_by_the_vae_factor(tmp_path: Path) -> None:
    compiled = read_compiled_pipeline(write_artefact(tmp_path / "m", height=768, width=1024))
    assert (compiled.height, compiled.width, compiled.shape) == (768, 1024, "1024x768")


def test_missing_sdk_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "optimum.neuron", None)  # import raises ImportError
    model = write_artefact(tmp_path / "m")
    with pytest.raises(EngineUnavailableError, match="pip install 'optimum-neuron"):
        build_engine(ServerSettings(engine="neuron", model=str(model)))
    # The CLI exits 2 before it binds a port.
    assert cli.main(["serve", "--engine", "neuron", "--model", str(model), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "needs the AWS Neuron SDK" in err and "Dockerfile.neuron" in err
