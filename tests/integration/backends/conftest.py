"""A tiny, randomly initialised Stable Diffusion pipeline, built in code and saved to disk.

Nothing is downloaded: the UNet, VAE and CLIP text encoder get tiny configs and
random weights (seeded), and the CLIP tokenizer reads a vocabulary written
here. The pipeline's native size is 64x64 and an image takes milliseconds on
a CPU, so the real diffusers engine can be tested in CI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

# Lower-case letters, each alone and as a word ending, after CLIP's two specials.
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
TINY_VOCAB = {
    "<|startoftext|>": 0,
    "<|endoftext|>": 1,
    **{c: 2 + i for i, c in enumerate(_LETTERS)},
    **{f"{c}</w>": 2 + len(_LETTERS) + i for i, c in enumerate(_LETTERS)},
}


def _stack() -> tuple[Any, Any, Any]:
    torch = pytest.importorskip("torch", reason="the diffusers engine tests need torch")
    diffusers = pytest.importorskip("diffusers", reason="the diffusers engine tests need diffusers")
    transformers = pytest.importorskip(
        "transformers", reason="the diffusers engine tests need transformers"
    )
    return torch, diffusers, transformers


def _tiny_parts(root: Path, cross_attention_dim: int, **unet_options: Any) -> dict[str, Any]:
    """UNet (8x8 latents), VAE (scale 8: 64x64 images), CLIP text config and tokenizer."""
    torch, diffusers, transformers = _stack()
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=2,
        **unet_options,
    )
    vae = diffusers.AutoencoderKL(
        sample_size=64,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    text_config = transformers.CLIPTextConfig(
        vocab_size=len(TINY_VOCAB),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=16,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    vocab_dir = root / "tiny-vocab"
    vocab_dir.mkdir(parents=True, exist_ok=True)
    (vocab_dir / "vocab.json").write_text(json.dumps(TINY_VOCAB))
    (vocab_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(
        str(vocab_dir), local_files_only=True, model_max_length=77
    )
    return {"unet": unet, "vae": vae, "text_config": text_config, "tokenizer": tokenizer}


def build_tiny_pipeline(root: Path) -> Path:
    """Save a tiny StableDiffusionPipeline under `root / "tiny-sd"` and return that path."""
    _, diffusers, transformers = _stack()
    parts = _tiny_parts(root, cross_attention_dim=16)
    scheduler = diffusers.DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = diffusers.StableDiffusionPipeline(
        unet=parts["unet"],
        vae=parts["vae"],
        text_encoder=transformers.CLIPTextModel(parts["text_config"]),
        tokenizer=parts["tokenizer"],
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out = root / "tiny-sd"
    pipe.save_pretrained(str(out))
    return out


def build_tiny_sdxl_pipeline(root: Path) -> Path:
    """Save a tiny StableDiffusionXLPipeline under `root / "tiny-sdxl"` and return that path.

    SDXL conditions on both text encoders (hidden states concatenated: 16 + 16)
    and on the pooled projection plus six size/crop numbers (6 * 4 + 16).
    """
    _, diffusers, transformers = _stack()
    parts = _tiny_parts(
        root,
        cross_attention_dim=32,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=6 * 4 + 16,
    )
    scheduler = diffusers.EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    pipe = diffusers.StableDiffusionXLPipeline(
        unet=parts["unet"],
        vae=parts["vae"],
        text_encoder=transformers.CLIPTextModel(parts["text_config"]),
        text_encoder_2=transformers.CLIPTextModelWithProjection(parts["text_config"]),
        tokenizer=parts["tokenizer"],
        tokenizer_2=parts["tokenizer"],
        scheduler=scheduler,
    )
    out = root / "tiny-sdxl"
    pipe.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the tiny SD pipeline (built once per test session)."""
    return build_tiny_pipeline(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the tiny SDXL pipeline (built once per test session)."""
    return build_tiny_sdxl_pipeline(tmp_path_factory.mktemp("models"))
