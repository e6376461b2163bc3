"""Tiny random components built in code, for tests and smoke runs (no downloads)."""

from __future__ import annotations

import torch
from transformers import T5Config, T5EncoderModel

from .data.text import word_tokenizer
from .models import VidGenTransformer3DModel, make_vae
from .schedulers import LTX_SCHEDULER_CONFIG, VidGenFlowMatchScheduler


def tiny_t5(vocab_size: int, d_model: int = 16, seed: int = 0) -> T5EncoderModel:
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )  # fmt: skip
    return T5EncoderModel(config).eval()


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Fill every parameter with Gaussian noise, so zero-initialised layers do not hide bugs in tests."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def tiny_transformer(layout: str = "full", in_channels: int = 8, text_dim: int = 16, seed: int = 0, **kw):
    model = VidGenTransformer3DModel(
        in_channels=in_channels, num_layers=2, num_attention_heads=2, attention_head_dim=8,
        caption_channels=text_dim, block_layout=layout, sample_size=(3, 8, 8), **kw,
    )  # fmt: skip
    return randomize_(model, seed).eval()


def tiny_components(
    layout: str = "full", vae_preset: str = "tiny-timestep", seed: int = 0, **transformer_kwargs
) -> dict:
    """Components of a tiny vidgen pipeline: 4x4x4-compressing VAE, 2-block DiT, 1-layer T5
    (``transformer_kwargs``: more transformer config, e.g. ``causal_chunk_size``)."""
    torch.manual_seed(seed)
    vae = make_vae(vae_preset).eval()
    tokenizer = word_tokenizer()
    return dict(
        vae=vae,
        text_encoder=tiny_t5(len(tokenizer), seed=seed),
        tokenizer=tokenizer,
        transformer=tiny_transformer(
            layout, in_channels=vae.config.latent_channels, seed=seed, **transformer_kwargs
        ),
        scheduler=VidGenFlowMatchScheduler(**LTX_SCHEDULER_CONFIG),
    )


def write_shapes_clips(folder, n: int, num_frames: int = 9, fps: float = 8) -> None:
    """``n`` Shapes clips as ``clip{i}.mp4`` with same-stem ``.txt`` captions: a tiny training set."""
    from pathlib import Path

    from .data import shapes
    from .video_io import export_to_video

    for i in range(n):
        clip = shapes.sample_clip(i, num_frames=num_frames)
        export_to_video(clip.frames, Path(folder) / f"clip{i}.mp4", fps=fps)
        (Path(folder) / f"clip{i}.txt").write_text(clip.caption)
