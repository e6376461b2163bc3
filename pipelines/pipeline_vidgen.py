"""Text-to-video: rectified-flow sampling of a video DiT in a causal video VAE's latent space."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from .common import VidGenPipelineBase, VidGenPipelineOutput

TURBO2K_SUBFOLDER = "transformer_turbo2k"
"""Where a pipeline folder keeps a Turbo2K student DiT (``scripts/distill_turbo2k.py``) next to its own
``transformer``: it works in the compressed latent space of the VAE in ``TURBO2K_VAE_SUBFOLDER`` and reads
the folder's text encoder (the CLI's ``--turbo`` loads both)."""
TURBO2K_VAE_SUBFOLDER = "vae_turbo2k"
"""Where a pipeline folder keeps the compressed VAE its Turbo2K student works in."""
TURBO2K_GUIDANCE_SCALE = 1.0
"""The guidance a Turbo2K student samples at by default: off (at the teacher's 2 it over-saturates)."""


def turbo2k_components(folder) -> dict:
    """The Turbo2K student a pipeline folder keeps next to its own parts, as keyword arguments for
    ``VidGenPipeline.from_pretrained(folder, **turbo2k_components(folder))``: the student DiT
    (``transformer``), its compressed VAE (``vae``) and its default guidance (off). Stored in float16,
    loaded in float32 (cast with ``pipe.to`` as usual)."""
    from ..models import VidGenTransformer3DModel, VidGenVideoAutoencoder

    missing = [
        sub
        for sub in (TURBO2K_SUBFOLDER, TURBO2K_VAE_SUBFOLDER)
        if not os.path.isdir(os.path.join(folder, sub))
    ]
    if missing:
        raise FileNotFoundError(
            f"{folder} has no Turbo2K student ({' and '.join(m + '/' for m in missing)} missing); distill one with "
            "scripts/distill_turbo2k.py and add it with save_turbo2k_student"
        )
    return {
        "transformer": VidGenTransformer3DModel.from_pretrained(
            folder, subfolder=TURBO2K_SUBFOLDER, torch_dtype=torch.float32
        ),
        "vae": VidGenVideoAutoencoder.from_pretrained(
            folder, subfolder=TURBO2K_VAE_SUBFOLDER, torch_dtype=torch.float32
        ),
        "default_guidance_scale": TURBO2K_GUIDANCE_SCALE,
    }


def save_turbo2k_student(student_folder, into, dtype: torch.dtype = torch.float16) -> None:
    """Add a distilled student (the pipeline folder ``scripts/distill_turbo2k.py`` writes) to the pipeline
    folder ``into``: its ``transformer`` and ``vae`` become ``TURBO2K_SUBFOLDER`` and
    ``TURBO2K_VAE_SUBFOLDER``, stored in ``dtype`` (float16 halves the size). The student reads ``into``'s
    text encoder, so the two folders' text encoders must hold the same weights. Each part is written to a
    temporary folder and renamed into place: a failure leaves no half-written part."""
    import shutil
    import tempfile

    from safetensors.torch import load_file

    from ..models import VidGenTransformer3DModel, VidGenVideoAutoencoder

    if not os.path.isfile(os.path.join(into, "model_index.json")):
        raise FileNotFoundError(f"into={into!r} is not a pipeline folder (no model_index.json)")
    weights = [os.path.join(folder, "text_encoder", "model.safetensors") for folder in (student_folder, into)]
    theirs, ours = (load_file(w) for w in weights)
    if theirs.keys() != ours.keys() or any(not torch.equal(theirs[k], ours[k]) for k in ours):
        raise ValueError(
            f"student_folder={student_folder!r} was distilled with another text encoder than into={into!r} has; "
            "the student reads the folder's text encoder, so they must be the same"
        )
    parts = (
        (VidGenTransformer3DModel, "transformer", TURBO2K_SUBFOLDER),
        (VidGenVideoAutoencoder, "vae", TURBO2K_VAE_SUBFOLDER),
    )
    for cls, sub, target in parts:
        model = cls.from_pretrained(student_folder, subfolder=sub, torch_dtype=dtype)
        tmp = tempfile.mkdtemp(prefix=f".{target}-", dir=into)
        os.chmod(tmp, 0o755)  # mkdtemp's is private; the part is package data like its neighbours
        try:
            model.save_pretrained(tmp)
        except BaseException:
            shutil.rmtree(tmp)
            raise
        final, old = os.path.join(into, target), os.path.join(into, f".{target}-old")
        if os.path.isdir(final):
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)


class VidGenPipeline(VidGenPipelineBase):
    r"""Text-to-video generation.

    Components: ``vae`` (``AutoencoderKLLTXVideo``), ``text_encoder`` (a transformers encoder, T5 family),
    ``tokenizer``, ``transformer`` (``VidGenTransformer3DModel`` or diffusers' ``LTXVideoTransformer3DModel``),
    ``scheduler`` (``VidGenFlowMatchScheduler``; a plain ``FlowMatchEulerDiscreteScheduler`` config is
    converted). A folder saved by diffusers' ``LTXPipeline`` loads as is.

    Example::

        pipe = VidGenPipeline.from_pretrained(path)
        video = pipe("a red circle moves right", generator=torch.Generator().manual_seed(0)).frames[0]
    """

    @torch.no_grad()
    def __call__(
        self,
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
        r"""Generate videos from text.

        Args:
            prompt: text(s) to generate from; or pass ``prompt_embeds`` + ``prompt_attention_mask``.
            negative_prompt: text(s) guided away from (default: empty string).
            height, width: pixels, multiples of the VAE's spatial compression (defaults: the model's size).
            num_frames: ``k * temporal_compression + 1`` frames (default: the model's length).
            frame_rate: frames per second (LTX-Video transformers condition their positions on it).
            num_inference_steps: Euler steps.
            guidance_scale: classifier-free guidance weight; ``<= 1`` disables guidance (default: the
                folder's ``default_guidance_scale``, else ``DEFAULT_GUIDANCE_SCALE``, 2).
            guidance_rescale: rescale of the guided prediction's std, in [0, 1].
            num_videos_per_prompt: videos per prompt.
            generator: seed(s); the same seed gives the same video.
            latents: packed initial noise ``(B, N, C)`` instead of drawing it.
            decode_timestep, decode_noise_scale: timestep-conditioned VAE decoding (defaults 0.05 / 0.025).
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            attention_kwargs: passed to the transformer (``{"scale": s}`` scales LoRA layers).
            callback_on_step_end: ``fn(pipe, step, t, tensors) -> dict`` after every step.
            max_sequence_length: text tokens (default ``min(128, tokenizer.model_max_length)``).

        Returns:
            ``VidGenPipelineOutput`` with ``.frames`` (or a tuple when ``return_dict=False``).
        """
        # 1. Check inputs and fill defaults from the model.
        guidance_scale = self.resolve_guidance_scale(guidance_scale)
        num_frames, height, width = self.resolve_video_size(num_frames, height, width)
        batch_size = self.check_inputs(
            prompt, negative_prompt, height, width, num_frames, frame_rate, num_inference_steps, guidance_scale,
            guidance_rescale, prompt_embeds, prompt_attention_mask, negative_prompt_embeds,
            negative_prompt_attention_mask, latents, generator, num_videos_per_prompt, output_type,
            callback_on_step_end_tensor_inputs,
        )  # fmt: skip
        device = self._execution_device
        do_cfg = guidance_scale > 1.0
        self._interrupt = False

        # 2. Encode the prompt; with guidance, batch [negative; positive].
        prompt_embeds, prompt_mask = self.encode_prompt_for_guidance(
            prompt, negative_prompt, do_cfg, num_videos_per_prompt, prompt_embeds, prompt_attention_mask,
            negative_prompt_embeds, negative_prompt_attention_mask, max_sequence_length, device,
        )  # fmt: skip

        # 3. Initial noise, packed into tokens.
        grid = self.latent_grid(num_frames, height, width)  # (F, H, W) latent
        total = batch_size * num_videos_per_prompt
        if latents is None:
            latents = self.pack_latents(self.prepare_noise(total, grid, generator, device))  # (B, N, C)
        latents = latents.to(device=device, dtype=torch.float32)

        # 4. Timesteps, shifted by the token count.
        self.scheduler.set_timesteps(num_inference_steps, device=device, num_tokens=latents.shape[1])
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)

        # 5. Denoising loop: Euler steps along the predicted velocity.
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self._interrupt:
                    break
                v = self.predict_velocity(
                    latents, t.expand(total), prompt_embeds, prompt_mask, grid, frame_rate, guidance_scale,
                    guidance_rescale, attention_kwargs,
                )  # fmt: skip
                latents = self.scheduler.step(v, t, latents, generator=generator, return_dict=False)[0]
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
