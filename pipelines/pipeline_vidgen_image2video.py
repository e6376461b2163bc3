"""Image-to-video: the first frame is given and kept clean through per-token timestep 0 (as LTX-Video does)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import PIL.Image
import torch

from .common import VidGenPipelineBase, VidGenPipelineOutput

ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor


def image_size(image: ImageInput) -> tuple[int, int]:
    """``(height, width)`` of a PIL image, ``(H, W, C)`` array or ``(C, H, W)`` tensor."""
    if isinstance(image, PIL.Image.Image):
        return image.height, image.width
    if isinstance(image, np.ndarray):
        return tuple(image.shape[-3:-1]) if image.ndim >= 3 else tuple(image.shape)
    return tuple(image.shape[-2:])


class VidGenImageToVideoPipeline(VidGenPipelineBase):
    r"""Image-to-video generation: animate ``image`` as the first frame, following ``prompt``.

    The image is encoded by the VAE into the first latent frame. Its tokens get timestep 0 at every
    step, so the transformer sees them as clean context and the scheduler leaves them untouched.
    Same components as :class:`VidGenPipeline`; switch with ``VidGenImageToVideoPipeline.from_pipe(pipe)``.
    """

    def check_image(self, image, batch_size: int, height: int, width: int) -> list[ImageInput]:
        images = image if isinstance(image, list) else [image]
        if not images or not all(isinstance(x, ImageInput) for x in images):
            raise ValueError(
                "image must be a PIL image, a numpy array or a torch tensor (or a list of them); "
                f"got {type(image).__name__}"
            )
        if len(images) not in (1, batch_size):
            raise ValueError(
                f"image list has {len(images)} entries; it must have 1 or the prompt batch size {batch_size}"
            )
        for x in images:
            if image_size(x) != (height, width):
                raise ValueError(
                    f"image must be {height}x{width} (height x width) to match the requested video; got "
                    f"{'x'.join(map(str, image_size(x)))}. Resize it, or leave height/width unset to use its size"
                )
        return images

    def encode_image(self, images: list[ImageInput], height: int, width: int, generator, device, dtype):
        """VAE latents ``(n, C, 1, H, W)`` of the conditioning images, normalised like the model's latents.

        With a list of generators (one per video), image ``i`` uses the generator of its first video."""
        images = [
            x.astype(np.float32) / 255 if isinstance(x, np.ndarray) and x.dtype == np.uint8 else x
            for x in images
        ]
        pixels = self.video_processor.preprocess(images, height=height, width=width)  # (n, 3, H, W)
        pixels = pixels.to(device, self.vae.dtype)
        per_image = len(generator) // len(images) if isinstance(generator, list) else 0
        latents = []
        for i, img in enumerate(pixels):
            g = generator[i * per_image] if isinstance(generator, list) else generator
            latents.append(self.vae.encode(img[None, :, None]).latent_dist.sample(g))
        return self.normalize_latents(torch.cat(latents).float())

    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput | list[ImageInput] = None,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        frame_rate: float = 25,
        num_inference_steps: int = 30,
        guidance_scale: float | None = None,
        guidance_rescale: float = 0.0,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
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
        r"""Generate videos that start from ``image``.

        Args:
            image: the first frame: PIL image, ``(H, W, 3)`` array (uint8, or float in [0, 1]) or ``(3, H, W)``
                tensor in [0, 1], or one per prompt.
                Its size must equal ``height x width`` (which default to the image's size).
            latents: packed noise ``(B, N, C)``; the first frame's tokens are replaced by the image's.
            Other arguments: as :meth:`VidGenPipeline.__call__`.
        """
        # 1. Check inputs; the video size defaults to the image's.
        guidance_scale = self.resolve_guidance_scale(guidance_scale)
        first = image[0] if isinstance(image, list) and image else image
        fallback_hw = image_size(first) if isinstance(first, ImageInput) else None
        num_frames, height, width = self.resolve_video_size(num_frames, height, width, fallback_hw)
        if image is None:
            raise ValueError("image is required: the first frame of the video")
        batch_size = self.check_inputs(
            prompt, negative_prompt, height, width, num_frames, frame_rate, num_inference_steps, guidance_scale,
            guidance_rescale, prompt_embeds, prompt_attention_mask, negative_prompt_embeds,
            negative_prompt_attention_mask, latents, generator, num_videos_per_prompt, output_type,
            callback_on_step_end_tensor_inputs,
        )  # fmt: skip
        images = self.check_image(image, batch_size, height, width)
        device = self._execution_device
        do_cfg = guidance_scale > 1.0
        self._interrupt = False

        # 2. Encode the prompt; with guidance, batch [negative; positive].
        prompt_embeds, prompt_mask = self.encode_prompt_for_guidance(
            prompt, negative_prompt, do_cfg, num_videos_per_prompt, prompt_embeds, prompt_attention_mask,
            negative_prompt_embeds, negative_prompt_attention_mask, max_sequence_length, device,
        )  # fmt: skip

        # 3. Latents: the encoded image in frame 0 (conditioning mask 1), noise elsewhere.
        grid = self.latent_grid(num_frames, height, width)  # (F, H, W) latent
        total = batch_size * num_videos_per_prompt
        image_latents = self.encode_image(images, height, width, generator, device, prompt_embeds.dtype)
        image_latents = image_latents.repeat_interleave(total // len(images), dim=0)  # (B, C, 1, H, W)
        cond_mask = torch.zeros((total, 1, *grid), device=device)
        cond_mask[:, :, 0] = 1.0
        if latents is None:
            noise = self.prepare_noise(total, grid, generator, device)  # (B, C, F, H, W)
        else:
            noise = self.unpack_latents(latents.to(device, torch.float32), grid)
        latents = self.pack_latents(image_latents * cond_mask + noise * (1 - cond_mask))  # (B, N, C)
        cond_mask = self.pack_latents(cond_mask).squeeze(-1)  # (B, N)

        # 4. Timesteps, shifted by the token count.
        self.scheduler.set_timesteps(num_inference_steps, device=device, num_tokens=latents.shape[1])
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)

        # 5. Denoising loop: first-frame tokens sit at t = 0, so they are neither noised nor moved.
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self._interrupt:
                    break
                token_t = t.expand(total)[:, None] * (1 - cond_mask)  # (B, N)
                v = self.predict_velocity(
                    latents, token_t, prompt_embeds, prompt_mask, grid, frame_rate, guidance_scale,
                    guidance_rescale, attention_kwargs,
                )  # fmt: skip
                latents = self.scheduler.step(
                    v, t, latents, per_token_timesteps=token_t, generator=generator, return_dict=False
                )[0]
                outputs = self.run_callback(
                    callback_on_step_end, i, t, callback_on_step_end_tensor_inputs, locals()
                )
                latents = outputs.pop("latents", latents)
                prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                progress_bar.update()

        # 6. Decode (the VAE decoder may do the last denoising step).
        video = self.decode_latents(
            latents, grid, decode_timestep, decode_noise_scale, generator, output_type, prompt_embeds.dtype
        )
        self.maybe_free_model_hooks()
        return VidGenPipelineOutput(frames=video) if return_dict else (video,)
