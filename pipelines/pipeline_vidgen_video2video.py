"""Video-to-video (SDEdit): noise an input video to a level set by ``strength`` and denoise it with a prompt.

Also the second stage of FreeSwim's high-resolution recipe: generate at the training size, upscale,
then denoise again at the target size with inward-window attention (see :func:`generate_high_resolution`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..attention import installed_attention
from ..attention.freeswim import FreeSwim
from .common import VidGenPipelineBase, VidGenPipelineOutput


class VidGenVideoToVideoPipeline(VidGenPipelineBase):
    r"""Video-to-video editing of ``video`` toward ``prompt`` (SDEdit, Meng et al. 2022).

    ``strength`` in (0, 1]: the input is noised to the flow time of the first kept step and the last
    ``ceil(strength * num_inference_steps)`` steps run; 1 ignores the input's content. Same components as
    :class:`VidGenPipeline`; switch with ``VidGenVideoToVideoPipeline.from_pipe(pipe)``.
    """

    @torch.no_grad()
    def __call__(
        self,
        video=None,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        strength: float = 0.7,
        height: int | None = None,
        width: int | None = None,
        frame_rate: float = 25,
        num_inference_steps: int = 30,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        decode_timestep: float | None = None,
        decode_noise_scale: float | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        attention_kwargs: dict | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        max_sequence_length: int | None = None,
    ) -> VidGenPipelineOutput | tuple:
        r"""Edit ``video`` (list of PIL images, ``(F, H, W, 3)`` array, or ``(F, 3, H, W)`` tensor in [0, 1]);
        it is resized to ``height`` x ``width`` (default: its own size). Other arguments: as
        :meth:`VidGenPipeline.__call__`."""
        # 1. Check inputs; sizes default to the input video's.
        guidance_scale = self.resolve_guidance_scale(guidance_scale)
        if video is None or len(video) == 0:
            raise ValueError("video is required: the frames to edit")
        if not (isinstance(strength, int | float) and 0 < strength <= 1):
            raise ValueError(f"strength must be in (0, 1]; got {strength}")
        first = np.asarray(video[0])
        h, w = first.shape[-2:] if isinstance(video, torch.Tensor) else first.shape[:2]
        num_frames, height, width = len(video), height or int(h), width or int(w)
        batch_size = self.check_inputs(
            prompt, negative_prompt, height, width, num_frames, frame_rate, num_inference_steps, guidance_scale,
            0.0, prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask,
            None, generator, 1, output_type, callback_on_step_end_tensor_inputs,
        )  # fmt: skip
        device = self._execution_device
        do_cfg = guidance_scale > 1.0
        self._interrupt = False

        # 2. Encode the prompt; with guidance, batch [negative; positive].
        prompt_embeds, prompt_mask = self.encode_prompt_for_guidance(
            prompt, negative_prompt, do_cfg, 1, prompt_embeds, prompt_attention_mask, negative_prompt_embeds,
            negative_prompt_attention_mask, max_sequence_length, device,
        )  # fmt: skip

        # 3. The input video's latents, packed into tokens.
        grid = self.latent_grid(num_frames, height, width)
        pixels = self.video_to_pixels(video, height, width).to(device, self.vae.dtype)  # (1, 3, F, H, W)
        clean = self.normalize_latents(self.vae.encode(pixels).latent_dist.mode().float())
        clean = self.pack_latents(clean).expand(batch_size, -1, -1)  # (B, N, C)

        # 4. Timesteps: the last ceil(strength * steps) of the full schedule.
        self.scheduler.set_timesteps(num_inference_steps, device=device, num_tokens=clean.shape[1])
        start = num_inference_steps - math.ceil(strength * num_inference_steps)
        timesteps = self.scheduler.timesteps[start:]
        self.scheduler.set_begin_index(start)
        self._num_timesteps = len(timesteps)

        # 5. Noise the input to the first kept step's level: x_t = (1 - sigma) x_0 + sigma * noise.
        noise = self.pack_latents(self.prepare_noise(batch_size, grid, generator, device))
        latents = self.scheduler.scale_noise(clean, timesteps[:1], noise)

        # 6. Denoising loop: Euler steps along the predicted velocity.
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self._interrupt:
                    break
                v = self.predict_velocity(
                    latents, t.expand(batch_size), prompt_embeds, prompt_mask, grid, frame_rate, guidance_scale,
                    0.0, attention_kwargs,
                )  # fmt: skip
                latents = self.scheduler.step(v, t, latents, generator=generator, return_dict=False)[0]
                outputs = self.run_callback(
                    callback_on_step_end, i, t, callback_on_step_end_tensor_inputs, locals()
                )
                latents = outputs.pop("latents", latents)
                progress_bar.update()

        # 7. Decode.
        frames = self.decode_latents(
            latents, grid, decode_timestep, decode_noise_scale, generator, output_type, prompt_embeds.dtype
        )
        self.maybe_free_model_hooks()
        return VidGenPipelineOutput(frames=frames) if return_dict else (frames,)


def generate_high_resolution(
    pipe,
    prompt: str,
    height: int,
    width: int,
    recipe: str = "upscale",
    strength: float = 0.7,
    **kwargs,
) -> torch.Tensor:
    """FreeSwim's high-resolution recipe with ``pipe``'s components; returns ``(F, 3, height, width)`` in [0, 1].

    ``recipe="upscale"`` (the official recipe): generate at the training size (the largest size within
    it with the target's aspect ratio), upscale bilinearly,
    then denoise again at the target size from ``strength`` with FreeSwim's windows. ``recipe="noise"``:
    generate at the target size from noise with FreeSwim's windows. ``kwargs`` go to both calls
    (``num_inference_steps``, ``guidance_scale``, ``generator`` seeds, ...). Enable FreeSwim first
    (``pipe.enable_freeswim()``); without it the target-size pass uses dense attention.
    """
    from .pipeline_vidgen import VidGenPipeline

    if recipe not in ("upscale", "noise"):
        raise ValueError(f"recipe must be 'upscale' or 'noise'; got {recipe!r}")
    t2v, v2v = VidGenPipeline(**pipe.components), VidGenVideoToVideoPipeline(**pipe.components)
    for p in (t2v, v2v):
        p.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    if recipe == "noise":
        return t2v(prompt, height=height, width=width, output_type="pt", **kwargs).frames[0]
    # 1. The native pass, at the largest multiple of the latent stride within the training size that
    #    keeps the target's aspect ratio (FreeSwim is dense there).
    _, train_h, train_w = pipe.default_video_size
    kind = installed_attention(pipe.transformer)
    stride = pipe.vae_spatial_compression_ratio * pipe.patch_size[1]
    if isinstance(kind, FreeSwim):
        train_h, train_w = (n * stride for n in kind.config.train_size)
    scale = min(train_h / height, train_w / width, 1.0)
    low_h, low_w = (max(stride, int(n * scale) // stride * stride) for n in (height, width))
    low = t2v(prompt, height=low_h, width=low_w, output_type="pt", **kwargs).frames[0]  # (F, 3, h, w)
    # 2. Upscale.
    up = F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False).clamp(0, 1)
    # 3. Denoise again at the target size from `strength`.
    kwargs.pop("num_frames", None)  # the video sets the length
    return v2v(up, prompt, strength=strength, output_type="pt", **kwargs).frames[0]
