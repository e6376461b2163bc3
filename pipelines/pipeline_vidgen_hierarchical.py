"""Two-stage hierarchical high-resolution synthesis (Turbo2K): generate at low resolution, keep the DiT's
multi-level features, and let them guide the generation at high resolution, with no decode and
re-encode between the stages.

1. Stage one denoises at the model's training size (cheap: a 64x64 clip is 320 tokens) and stops at the
   latents.
2. One forward of the clean low-resolution latents at timestep 0 gives every block's features; the
   :class:`~vidgen.models.turbo2k.HierarchicalAdapter` maps those of its blocks to residuals and
   upsamples them to the high-resolution token grid.
3. Stage two denoises at high resolution with the residuals added to the same blocks at every step: the
   low-resolution layout (how many objects, where, which color) comes from stage one, the detail from
   stage two. It starts from pure noise (``strength=1``) or, cheaper, from the stage-one latents upsampled
   in latent space and noised for the last ``ceil(strength * steps)`` steps, which alone run (still no
   pixels in between).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..models import VidGenTransformer3DModel, VidGenVideoAutoencoder
from ..models.turbo2k import HierarchicalAdapter
from .common import VidGenPipelineBase, VidGenPipelineOutput

HIERARCHICAL_SUBFOLDER = "hierarchical_adapter"
"""Where a pipeline folder keeps its stage-two adapter (the embedded default does; ``--hierarchical``
loads it from there)."""


class VidGenHierarchicalPipeline(VidGenPipelineBase):
    r"""High-resolution text-to-video in two stages with one DiT and a :class:`HierarchicalAdapter`.

    Example::

        adapter = HierarchicalAdapter.from_pretrained(vidgen.DEFAULT_MODEL, subfolder=HIERARCHICAL_SUBFOLDER)
        pipe = VidGenHierarchicalPipeline.from_pretrained(vidgen.DEFAULT_MODEL, hierarchical_adapter=adapter)
        video = pipe("a red circle moves right", height=256, width=256).frames[0]

    ``save_pretrained`` writes the adapter to ``hierarchical_adapter/`` (``HIERARCHICAL_SUBFOLDER``), so a
    saved folder loads back with no argument.
    """

    def __init__(
        self,
        vae: AutoencoderKLLTXVideo | VidGenVideoAutoencoder,
        text_encoder: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        transformer: VidGenTransformer3DModel,
        scheduler: FlowMatchEulerDiscreteScheduler,
        hierarchical_adapter: HierarchicalAdapter,
        default_guidance_scale: float | None = None,
    ):
        super().__init__(vae, text_encoder, tokenizer, transformer, scheduler, default_guidance_scale)
        self.register_modules(hierarchical_adapter=hierarchical_adapter)

    def denoise(
        self, latents, sigmas, prompt_embeds, prompt_mask, grid, frame_rate, guidance_scale,
        attention_kwargs, transformer_kwargs=None,
    ) -> torch.Tensor:  # fmt: skip
        """Euler steps of packed ``latents`` ``(B, N, C)`` through ``sigmas`` (the last one is the end)."""
        total = latents.shape[0]
        with self.progress_bar(total=len(sigmas) - 1) as progress_bar:
            for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
                t = (sigma * 1000).expand(total)
                v = self.predict_velocity(
                    latents, t, prompt_embeds, prompt_mask, grid, frame_rate, guidance_scale,
                    attention_kwargs=attention_kwargs, transformer_kwargs=transformer_kwargs,
                )  # fmt: skip
                latents = latents + (sigma_next - sigma) * v
                progress_bar.update()
        return latents

    def stage_sigmas(self, steps: int, num_tokens: int, strength: float, device) -> torch.Tensor:
        """The scheduler's levels shifted for ``num_tokens``, ending at 0: all ``steps + 1`` of them, or
        with ``strength < 1`` the last ``ceil(strength * steps) + 1`` (diffusers' image-to-image convention,
        as :class:`VidGenVideoToVideoPipeline` uses it)."""
        self.scheduler.set_timesteps(steps, device=device, num_tokens=num_tokens)
        sigmas = self.scheduler.sigmas.to(device=device, dtype=torch.float32)  # (steps + 1,), ends at 0
        return sigmas[steps - math.ceil(strength * steps) :]

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        low_res_height: int | None = None,
        low_res_width: int | None = None,
        frame_rate: float | None = None,
        num_inference_steps: int = 30,
        high_res_inference_steps: int = 10,
        strength: float = 1.0,
        guidance_scale: float | None = None,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        decode_timestep: float | None = None,
        decode_noise_scale: float | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        attention_kwargs: dict | None = None,
        max_sequence_length: int | None = None,
    ) -> VidGenPipelineOutput | tuple:
        r"""Generate a high-resolution video through a low-resolution one.

        Args:
            height, width: the output size (default: twice the low resolution on each side); its token grid
                must be an integer multiple of the low resolution's.
            low_res_height, low_res_width: stage one's size (default: the model's training size); the
                high-resolution token grid must be an integer multiple of its token grid.
            num_inference_steps: stage-one Euler steps.
            high_res_inference_steps: stage-two Euler steps.
            strength: in (0, 1]; 1: stage two starts from pure noise; below 1 it starts from the stage-one
                latents upsampled in latent space, noised to the level of the first of its last
                ``ceil(strength * high_res_inference_steps)`` steps, which are the ones that run.
            Others as in :class:`VidGenPipeline`.
        """
        # 1. Check inputs; stage one's size defaults to the model's, stage two's to twice that.
        guidance_scale = self.resolve_guidance_scale(guidance_scale)
        num_frames, low_h, low_w = self.resolve_video_size(num_frames, low_res_height, low_res_width)
        height, width = height or 2 * low_h, width or 2 * low_w
        frame_rate = self.default_frame_rate if frame_rate is None else frame_rate
        batch_size = self.check_inputs(
            prompt, negative_prompt, height, width, num_frames, frame_rate, high_res_inference_steps,
            guidance_scale, 0.0, prompt_embeds, prompt_attention_mask, negative_prompt_embeds,
            negative_prompt_attention_mask, None, generator, num_videos_per_prompt, output_type, [],
        )  # fmt: skip
        self.check_inputs(
            prompt, negative_prompt, low_h, low_w, num_frames, frame_rate, num_inference_steps, guidance_scale,
            0.0, prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask,
            None, generator, num_videos_per_prompt, output_type, [],
        )  # fmt: skip
        if not isinstance(self.transformer, VidGenTransformer3DModel):
            raise ValueError(
                f"VidGenHierarchicalPipeline needs a VidGenTransformer3DModel (block features and residuals); "
                f"got {type(self.transformer).__name__}"
            )
        dit, adapter = self.transformer.config, self.hierarchical_adapter.config
        dim = dit.num_attention_heads * dit.attention_head_dim
        if adapter.dim != dim or max(adapter.blocks) >= dit.num_layers:
            raise ValueError(
                f"hierarchical_adapter (dim {adapter.dim}, blocks {adapter.blocks}) does not fit the transformer "
                f"(width {dim}, {dit.num_layers} blocks)"
            )
        low_grid = self.latent_grid(num_frames, low_h, low_w)  # (F, h, w) latent
        high_grid = self.latent_grid(num_frames, height, width)  # (F, H, W) latent
        low_tokens, high_tokens = self.token_grid(low_grid), self.token_grid(high_grid)
        if high_tokens[1] % low_tokens[1] or high_tokens[2] % low_tokens[2]:
            raise ValueError(
                f"height x width {height}x{width} must be an integer multiple of the low resolution "
                f"{low_h}x{low_w} (token grids {high_tokens[1:]} and {low_tokens[1:]})"
            )
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1]; got {strength}")
        device = self._execution_device
        do_cfg = guidance_scale > 1.0
        total = batch_size * num_videos_per_prompt

        # 2. Encode the prompt; with guidance, batch [negative; positive].
        prompt_embeds, prompt_mask = self.encode_prompt_for_guidance(
            prompt, negative_prompt, do_cfg, num_videos_per_prompt, prompt_embeds, prompt_attention_mask,
            negative_prompt_embeds, negative_prompt_attention_mask, max_sequence_length, device,
        )  # fmt: skip

        # 3. Stage one: low resolution, no decode.
        low = self.pack_latents(self.prepare_noise(total, low_grid, generator, device))  # (B, n, C)
        sigmas = self.stage_sigmas(num_inference_steps, low.shape[1], 1.0, device)
        low = self.denoise(
            low, sigmas, prompt_embeds, prompt_mask, low_grid, frame_rate, guidance_scale, attention_kwargs
        )

        # 4. Multi-level features of the clean low-resolution latents -> residuals on the high-resolution grid.
        rows = torch.cat([low, low]) if do_cfg else low  # the same [negative; positive] rows as the steps
        dtype = self.transformer.dtype
        hidden = self.transformer(
            hidden_states=rows.to(dtype), encoder_hidden_states=prompt_embeds.to(dtype),
            timestep=torch.zeros(len(rows), device=device), encoder_attention_mask=prompt_mask,
            num_frames=low_grid[0], height=low_grid[1], width=low_grid[2], output_hidden_states=True,
            attention_kwargs=attention_kwargs,
        ).hidden_states  # fmt: skip
        residuals = self.hierarchical_adapter(hidden, low_tokens, high_tokens)  # {block: (B', N, D)}

        # 5. Stage two: high resolution, guided by the residuals at every step.
        latents = self.pack_latents(self.prepare_noise(total, high_grid, generator, device))  # (B, N, C)
        sigmas = self.stage_sigmas(high_res_inference_steps, latents.shape[1], strength, device)
        if strength < 1:  # SDEdit in latent space from the upsampled stage-one latents
            up = F.interpolate(self.unpack_latents(low, low_grid), size=high_grid, mode="nearest")
            latents = (1 - sigmas[0]) * self.pack_latents(up) + sigmas[0] * latents
        latents = self.denoise(
            latents, sigmas, prompt_embeds, prompt_mask, high_grid, frame_rate, guidance_scale,
            attention_kwargs, transformer_kwargs={"block_residuals": residuals},
        )  # fmt: skip

        # 6. Decode (the VAE decoder may do the last denoising step).
        video = self.decode_latents(
            latents,
            high_grid,
            decode_timestep,
            decode_noise_scale,
            generator,
            output_type,
            prompt_embeds.dtype,
        )
        self.maybe_free_model_hooks()
        return VidGenPipelineOutput(frames=video) if return_dict else (video,)
