"""Named configurations of diffusers' ``AutoencoderKLLTXVideo``, the causal video VAE vidgen uses.

The VAE patchifies inside itself (space-to-depth before the encoder), is causal in time (the first
frame is encoded alone, so ``num_frames = k * temporal_compression + 1``) and, when
``timestep_conditioning`` is set, its decoder is conditioned on a timestep and performs the last
denoising step (pipelines then re-noise with ``decode_noise_scale`` and decode at ``decode_timestep``).
"""

from __future__ import annotations

from diffusers import AutoencoderKLLTXVideo

VAE_PRESETS: dict[str, dict] = {
    # LTX-Video 0.9.1 (2B): 1:192 compression, 32x32x8 pixels per latent token, 128 channels,
    # timestep-conditioned decoder with noise injection.
    "ltx-video": dict(
        in_channels=3,
        out_channels=3,
        latent_channels=128,
        block_out_channels=(128, 256, 512, 512),
        decoder_block_out_channels=(256, 512, 1024),
        layers_per_block=(4, 3, 3, 3, 4),
        decoder_layers_per_block=(5, 6, 7, 8),
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True),
        decoder_inject_noise=(True, True, True, False),
        upsample_residual=(True, True, True),
        upsample_factor=(2, 2, 2),
        timestep_conditioning=True,
        patch_size=4,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    ),
    # A small VAE (8x spatial, 4x temporal, 16 channels) sized for the Shapes world on a CPU.
    "small": dict(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        block_out_channels=(32, 64, 64, 64),
        decoder_block_out_channels=(64, 64, 64, 64),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=True,
        patch_size=2,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    ),
    # Tiny VAEs for tests (4x spatial, 4x temporal, 8 channels); with and without timestep conditioning.
    "tiny": dict(
        in_channels=3,
        out_channels=3,
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=False,
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    ),
}
VAE_PRESETS["tiny-timestep"] = {**VAE_PRESETS["tiny"], "timestep_conditioning": True}


def make_vae(preset: str, **overrides) -> AutoencoderKLLTXVideo:
    """Build a randomly initialised ``AutoencoderKLLTXVideo`` from a named preset."""
    if preset not in VAE_PRESETS:
        raise ValueError(f"VAE preset must be one of {sorted(VAE_PRESETS)}; got {preset!r}")
    return AutoencoderKLLTXVideo(**{**VAE_PRESETS[preset], **overrides})
