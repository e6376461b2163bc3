"""VidGenVideoAutoencoder: a small LTX-style causal video autoencoder for the embedded default model.

Why not a small preset of diffusers' ``AutoencoderKLLTXVideo``: on this project's 2-core CPU that
class trained far more slowly at tiny widths than a plain convolutional autoencoder a tenth of its size
(15-17 dB PSNR after 900 steps against 27 dB after 600 steps, on Shapes clips). The default model has
to train end to end in about two hours here, so it uses this class, which keeps LTX-Video's ideas:

- patchify inside the VAE (2x2 space-to-depth before the first convolution);
- causal 3D convolutions in the encoder: the first frame is encoded alone, so a video of
  ``k * 4 + 1`` frames has ``k + 1`` latent frames;
- a timestep-conditioned decoder (scale and shift of every normalisation from the timestep) trained on
  slightly noised latents, so it performs the last denoising step (LTX's ``decode_timestep``).

It exposes the interface vidgen's pipelines use on ``AutoencoderKLLTXVideo``: ``encode(x).latent_dist``,
``decode(z, temb)``, ``spatial_compression_ratio``, ``temporal_compression_ratio``, ``latents_mean``,
``latents_std``, ``config.scaling_factor`` and ``config.timestep_conditioning``. Real LTX-Video
checkpoints keep loading into ``AutoencoderKLLTXVideo``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class CausalConv3d(nn.Module):
    """3x3x3 convolution; in time it pads with copies of the first frame (causal) or both ends."""

    def __init__(self, cin: int, cout: int, stride: int = 1, causal: bool = True):
        super().__init__()
        self.causal = causal
        self.conv = nn.Conv3d(cin, cout, 3, stride=stride, padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, F, H, W)
        if self.causal:
            x = torch.cat([x[:, :, :1]] * 2 + [x], dim=2)
        else:
            x = torch.cat([x[:, :, :1], x, x[:, :, -1:]], dim=2)
        return self.conv(x)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm over each frame alone: statistics never mix frames, so the encoder stays causal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, F, H, W)
        B, C, T, H, W = x.shape
        y = super().forward(x.transpose(1, 2).reshape(B * T, C, H, W))
        return y.reshape(B, T, C, H, W).transpose(1, 2)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with optional timestep scale/shift on both norms."""

    def __init__(self, channels: int, causal: bool, temb_dim: int | None = None):
        super().__init__()
        self.norm1, self.norm2 = FrameGroupNorm(8, channels), FrameGroupNorm(8, channels)
        self.conv1, self.conv2 = (
            CausalConv3d(channels, channels, causal=causal),
            CausalConv3d(channels, channels, causal=causal),
        )
        self.temb = nn.Linear(temb_dim, 4 * channels) if temb_dim else None
        if self.temb is not None:
            nn.init.zeros_(self.temb.weight)
            nn.init.zeros_(self.temb.bias)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        mods = [0.0, 0.0, 0.0, 0.0]
        if self.temb is not None and temb is not None:
            mods = self.temb(temb)[:, :, None, None, None].chunk(4, dim=1)  # each (B, C, 1, 1, 1)
        h = self.norm1(x) * (1 + mods[0]) + mods[1]
        h = self.conv1(F.silu(h))
        h = self.norm2(h) * (1 + mods[2]) + mods[3]
        return x + self.conv2(F.silu(h))


def space_to_depth(x: torch.Tensor, p: int) -> torch.Tensor:
    B, C, T, H, W = x.shape
    x = x.reshape(B, C, T, H // p, p, W // p, p)
    return x.permute(0, 1, 4, 6, 2, 3, 5).reshape(B, C * p * p, T, H // p, W // p)


def depth_to_space(x: torch.Tensor, p: int) -> torch.Tensor:
    B, C, T, H, W = x.shape
    x = x.reshape(B, C // (p * p), p, p, T, H, W)
    return x.permute(0, 1, 4, 5, 2, 6, 3).reshape(B, C // (p * p), T, H * p, W * p)


class Upsample(nn.Module):
    """x2 in time, height and width by nearest-neighbour repetition, then a convolution; the first
    output frame is dropped so ``F`` latent frames become ``2F - 1`` (the causal first frame stays
    single). Nearest-neighbour rather than pixel shuffle: it trained markedly faster here."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = CausalConv3d(cin, cout, causal=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.repeat_interleave(2, dim=2)[:, :, 1:]
        x = x.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)
        return self.conv(x)


AUTOENCODER_PRESETS: dict[str, dict] = {
    # The default model's: a latent token per 8x8 pixels x 4 frames, 16 channels (a 17-frame 64x64 clip
    # is 5x8x8 tokens).
    "shapes": dict(latent_channels=16, block_out_channels=(32, 48, 64), patch_size=2),
    # Turbo2K's compressed latent space: a token per 16x16 pixels x 4 frames, 32 channels (5x4x4 tokens,
    # 4x fewer), the extra compression in the patchify, as LTX-Video does it.
    "shapes-compressed": dict(latent_channels=32, block_out_channels=(48, 64, 96), patch_size=4),
}


class VidGenVideoAutoencoder(ModelMixin, ConfigMixin):
    r"""Causal video autoencoder: ``patch_size`` space-to-depth, then ``len(block_out_channels) - 1``
    stride-2 stages in time and space. Spatial compression ``patch_size * 2**stages``, temporal
    ``2**stages``. ``decoder_block_out_channels`` (default: the encoder's) sizes the decoder alone.
    ``encode`` returns a (deterministic) ``DiagonalGaussianDistribution`` over the latents."""

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 16,
        block_out_channels: tuple[int, ...] = (32, 64, 96),
        decoder_block_out_channels: tuple[int, ...] | None = None,
        patch_size: int = 2,
        timestep_conditioning: bool = True,
        scaling_factor: float = 1.0,
    ):
        super().__init__()
        chans = list(block_out_channels)
        stages = len(chans) - 1
        self.spatial_compression_ratio = patch_size * 2**stages
        self.temporal_compression_ratio = 2**stages
        # Encoder: causal.
        self.enc_in = CausalConv3d(in_channels * patch_size**2, chans[0])
        self.enc_blocks = nn.ModuleList(ResBlock(c, causal=True) for c in chans)
        self.enc_down = nn.ModuleList(CausalConv3d(chans[i], chans[i + 1], stride=2) for i in range(stages))
        self.enc_norm = FrameGroupNorm(8, chans[-1])
        self.enc_out = CausalConv3d(chans[-1], latent_channels)
        # Decoder: non-causal, timestep-conditioned; its own widths when given (a small, fast decoder
        # for streaming shares the encoder and so the latent space).
        dchans = list(decoder_block_out_channels or block_out_channels)
        if len(dchans) != len(chans):
            raise ValueError(
                f"decoder_block_out_channels must have {len(chans)} entries like block_out_channels; got {dchans}"
            )
        temb_dim = 4 * dchans[0] if timestep_conditioning else None
        if timestep_conditioning:
            self.time_proj = Timesteps(dchans[0], flip_sin_to_cos=True, downscale_freq_shift=0)
            self.time_embed = TimestepEmbedding(dchans[0], temb_dim)
        rchans = dchans[::-1]
        self.dec_in = CausalConv3d(latent_channels, rchans[0], causal=False)
        self.dec_blocks = nn.ModuleList(ResBlock(c, causal=False, temb_dim=temb_dim) for c in rchans)
        self.dec_up = nn.ModuleList(Upsample(rchans[i], rchans[i + 1]) for i in range(stages))
        self.dec_norm = FrameGroupNorm(8, rchans[-1])
        self.dec_out = CausalConv3d(rchans[-1], in_channels * patch_size**2, causal=False)
        self.register_buffer("latents_mean", torch.zeros(latent_channels))
        self.register_buffer("latents_std", torch.ones(latent_channels))

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """``(B, 3, F, H, W)`` in [-1, 1] -> latents ``(B, C, (F-1)/t + 1, H/s, W/s)``."""
        h = self.enc_in(space_to_depth(x, self.config.patch_size))
        for i, block in enumerate(self.enc_blocks):
            h = block(h)
            if i < len(self.enc_down):
                h = self.enc_down[i](h)
        z = self.enc_out(F.silu(self.enc_norm(h)))
        dist = DiagonalGaussianDistribution(torch.cat([z, torch.zeros_like(z)], dim=1), deterministic=True)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, temb: torch.Tensor | None = None, return_dict: bool = True):
        """Latents (and, for a timestep-conditioned decoder, their noise level ``temb`` ``(B,)`` in
        [0, 1]) -> video ``(B, 3, F, H, W)`` in about [-1, 1]."""
        t = None
        if self.config.timestep_conditioning:
            level = (
                torch.zeros(z.shape[0], device=z.device)
                if temb is None
                else temb.to(z.device).float().expand(z.shape[0])
            )
            t = self.time_embed(self.time_proj(level * 1000).to(z.dtype))
        h = self.dec_in(z)
        for i, block in enumerate(self.dec_blocks):
            h = block(h, t)
            if i < len(self.dec_up):
                h = self.dec_up[i](h)
        x = depth_to_space(self.dec_out(F.silu(self.dec_norm(h))), self.config.patch_size)
        return DecoderOutput(sample=x) if return_dict else (x,)
