"""Autoregressive video generation: a causal DiT writes the video chunk by chunk with a KV cache
(Self-Forcing's inference loop), past its training length with a rolling cache, streaming each chunk's
frames as soon as they are decoded.

Per chunk of ``causal_chunk_size`` latent frames (latent frame 0 alone when the transformer has
``independent_first_frame``; the last chunk may be shorter):

1. few-step denoising from pure noise: predict the clean chunk ``x0 = x - sigma * v`` (attending to the
   cached past), then re-noise it to the next, lower level ``x = (1 - s) * x0 + s * noise``;
2. one context pass of the clean chunk at timestep 0 that appends its keys and values to the cache (the
   denoising passes only read it);
3. decode the chunk with a few earlier latent frames as left context, and hand its frames out.

The cache keeps the last ``kv_cache_frames`` latent frames (plus ``num_pinned_frames`` first ones);
positions keep increasing (RoPE on absolute frame indices), so a chunk sees the same relative
distances at frame 300 as at frame 3.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from ..models import KVCache, VidGenTransformer3DModel
from .common import VidGenPipelineBase, VidGenPipelineOutput

CAUSAL_SUBFOLDER = "transformer_causal"
"""Where a pipeline folder keeps a causal student next to its bidirectional ``transformer`` (the
embedded default does; the CLI's ``--autoregressive`` loads it from there)."""
STREAMING_VAE_SUBFOLDER = "vae_streaming"
"""Where a pipeline folder keeps a VAE with the same encoder and a small, fast decoder for streaming
(``scripts/train_decoder.py``); ``--autoregressive`` uses it when present."""
CAUSAL_TEXT_ENCODER_SUBFOLDER = "text_encoder_causal"
"""Where a pipeline folder keeps the text encoder its causal student was distilled with, when the
folder's own ``text_encoder`` was trained further afterwards: the student reads that encoder's
embeddings, so the two travel together."""


def causal_components(folder) -> dict:
    """The parts a pipeline folder keeps for rollout next to its bidirectional ones, as keyword arguments
    for ``VidGenAutoregressivePipeline.from_pretrained(folder, **causal_components(folder))``: the causal
    student (``transformer``), the text encoder it was distilled with (``text_encoder``) and the streaming
    decoder (``vae``), each only when the folder has it."""
    from transformers import T5EncoderModel

    from ..models import VidGenVideoAutoencoder

    parts = (
        ("transformer", CAUSAL_SUBFOLDER, VidGenTransformer3DModel),
        ("text_encoder", CAUSAL_TEXT_ENCODER_SUBFOLDER, T5EncoderModel),
        ("vae", STREAMING_VAE_SUBFOLDER, VidGenVideoAutoencoder),
    )
    return {
        name: cls.from_pretrained(os.path.join(folder, sub))
        for name, sub, cls in parts
        if os.path.isdir(os.path.join(folder, sub))
    }


class VidGenAutoregressivePipeline(VidGenPipelineBase):
    r"""Long videos by autoregressive rollout of a causal ``VidGenTransformer3DModel``
    (``causal_chunk_size`` set), for text-to-video and for extending given frames.

    Same components as :class:`VidGenPipeline`; the transformer must be causal. With the embedded
    default model::

        parts = causal_components(vidgen.DEFAULT_MODEL)  # the causal student and what it was trained with
        pipe = VidGenAutoregressivePipeline.from_pretrained(vidgen.DEFAULT_MODEL, **parts)
        video = pipe("a red circle moves right", num_frames=341).frames[0]
        for frames in pipe.stream("a red circle moves right", num_frames=341):  # (B, f, H, W, 3) per chunk
            ...
    """

    def _check_causal_transformer(self) -> None:
        if not isinstance(self.transformer, VidGenTransformer3DModel) or (
            self.transformer.config.causal_chunk_size is None
        ):
            raise ValueError(
                "VidGenAutoregressivePipeline needs a causal VidGenTransformer3DModel (causal_chunk_size set); "
                f"got {type(self.transformer).__name__} with causal_chunk_size="
                f"{getattr(self.transformer.config, 'causal_chunk_size', None)}"
            )

    def default_kv_cache_frames(self) -> int:
        """The training horizon minus one chunk: every query then sees as many frames as in training."""
        chunk = self.transformer.config.causal_chunk_size
        return max(chunk, self.transformer.config.sample_size[0] - chunk)

    def _given_latents(self, video, height: int, width: int, device):
        """Encode the frames to extend: normalised latents ``(1, C, G, H, W)`` and pixels ``(1, 3, F, H, W)``."""
        t = self.vae_temporal_compression_ratio
        frames = len(video)
        starts = self.transformer.chunk_starts(frames)  # in latent frames, enough of them
        if (frames - 1) % t or (frames - 1) // t + 1 not in starts:
            ok = [(f - 1) * t + 1 for f in starts[1:6]]
            raise ValueError(
                f"video must have k*{t} + 1 frames that end on a chunk boundary of the causal transformer "
                f"(whole chunks of latent frames, e.g. {ok}); got {frames}"
            )
        pixels = self.video_to_pixels(video, height, width).to(device, self.vae.dtype)  # (1, 3, F, H, W)
        latents = self.normalize_latents(self.vae.encode(pixels).latent_dist.mode().float())
        return latents, pixels

    def _decode_chunk(
        self, clean: torch.Tensor, start: int, end: int, context: int, decode_args
    ) -> torch.Tensor:
        """Pixel frames ``(B, f, 3, H, W)`` in [0, 1] of latent frames ``[start, end)``, decoded with up to
        ``context`` earlier latent frames (the first latent frame decodes to one pixel frame, every
        later one to ``t``)."""
        first = max(0, start - context)
        window = clean[:, :, first:end]  # (B, C, f, H, W)
        video = self.decode_latents(self.pack_latents(window), tuple(window.shape[2:]), *decode_args)
        t = self.vae_temporal_compression_ratio
        keep = (end - start) * t - (t - 1 if start == 0 else 0)
        return video[:, -keep:]

    @torch.no_grad()
    def stream(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        video=None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        frame_rate: float | None = None,
        num_inference_steps: int = 4,
        guidance_scale: float = 1.0,
        kv_cache_frames: int | None = None,
        num_pinned_frames: int = 0,
        decode_context_frames: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        decode_timestep: float | None = None,
        decode_noise_scale: float | None = None,
        output_type: str = "np",
        attention_kwargs: dict | None = None,
        max_sequence_length: int | None = None,
    ) -> Iterator:
        r"""Generate chunk by chunk, yielding each chunk's frames as soon as they are decoded.

        Args:
            prompt, negative_prompt, prompt_embeds, ...: as :meth:`VidGenPipeline.__call__`.
            video: frames to extend (``k*4 + 1`` of them, whole chunks): they fill the cache first and
                come back unchanged as the first frames; ``num_frames`` counts them.
            num_frames: total length, ``k*4 + 1`` frames (default: the model's training length).
            num_inference_steps: few-step denoising levels per chunk (Self-Forcing uses 4).
            guidance_scale: classifier-free guidance; a distilled student has it built in (default 1: off).
            kv_cache_frames: latent frames the cache keeps (default: the training horizon minus a chunk).
            num_pinned_frames: first latent frames that are never evicted (attention sinks).
            decode_context_frames: earlier latent frames decoded with each chunk (>= 1) for seamless joins.
            output_type: ``"np"`` ``(B, f, H, W, 3)``, ``"pt"`` ``(B, f, 3, H, W)``, ``"pil"`` lists, or
                ``"latent"`` (the chunk's packed latents ``(B, n, C)``).

        Yields:
            The frames of each chunk in order (the given frames first, when extending).
        """
        # 1. Check inputs; the causal chunks and the cache window come from the transformer's config.
        self._check_causal_transformer()
        frame_rate = frame_rate or self.default_frame_rate
        if video is not None:
            first = np.asarray(video[0])
            h, w = first.shape[-2:] if isinstance(video, torch.Tensor) else first.shape[:2]
            height, width = height or int(h), width or int(w)
        num_frames, height, width = self.resolve_video_size(num_frames, height, width)
        batch_size = self.check_inputs(
            prompt, negative_prompt, height, width, num_frames, frame_rate, num_inference_steps, guidance_scale,
            0.0, prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask,
            None, generator, 1, output_type, (),
        )  # fmt: skip
        grid = self.latent_grid(num_frames, height, width)  # (F, H, W) latent
        F = grid[0]
        if F > self.transformer.rope.max_frame_position:
            raise ValueError(
                f"num_frames must stay within the position embedding's {self.transformer.rope.max_frame_position} "
                f"latent frames; got {num_frames} ({F} latent frames)"
            )
        kv_cache_frames = self.default_kv_cache_frames() if kv_cache_frames is None else kv_cache_frames
        if not isinstance(kv_cache_frames, int) or kv_cache_frames < 1:
            raise ValueError(f"kv_cache_frames must be an integer >= 1; got {kv_cache_frames}")
        if not isinstance(num_pinned_frames, int) or not 0 <= num_pinned_frames < kv_cache_frames:
            raise ValueError(
                f"num_pinned_frames must be an integer in [0, kv_cache_frames) = [0, {kv_cache_frames}); "
                f"got {num_pinned_frames}"
            )
        if not isinstance(decode_context_frames, int) or decode_context_frames < 1:
            raise ValueError(f"decode_context_frames must be an integer >= 1; got {decode_context_frames}")
        if video is not None and batch_size != 1:
            raise ValueError(f"extending a video takes one prompt; got {batch_size}")
        device = self._execution_device
        do_cfg = guidance_scale > 1.0
        self._interrupt = False

        # 2. Encode the prompt; with guidance, batch [negative; positive] (the cache then holds both rows).
        prompt_embeds, prompt_mask = self.encode_prompt_for_guidance(
            prompt, negative_prompt, do_cfg, 1, prompt_embeds, prompt_attention_mask, negative_prompt_embeds,
            negative_prompt_attention_mask, max_sequence_length, device,
        )  # fmt: skip
        B = batch_size

        # 3. Noise for every latent frame, drawn up front: the seed fixes the whole video.
        noise = self.prepare_noise(B, grid, generator, device)  # (B, C, F, H, W)
        clean = torch.zeros_like(noise)  # the denoised latents, filled chunk by chunk

        # 4. Few-step noise levels, shifted for the training clip's token count (not the rollout's).
        sigmas = self.scheduler.few_step_sigmas(
            num_inference_steps, num_tokens=int(np.prod(self.transformer.config.sample_size))
        ).tolist()
        self._num_timesteps = len(sigmas)

        # 5. KV cache; when extending, the given frames fill it first (context passes at timestep 0).
        cache = KVCache(
            self.transformer.config.num_layers,
            max_frames=kv_cache_frames,
            num_pinned_frames=num_pinned_frames,
        )

        def velocity(x, sigma, offset, update):
            cache_kwargs = dict(frame_offset=offset, kv_cache=cache, update_kv_cache=update)
            return self.predict_velocity(
                x, torch.full((B,), sigma * 1000.0, device=device), prompt_embeds, prompt_mask,
                (x.shape[1] // (grid[1] * grid[2]), grid[1], grid[2]), frame_rate, guidance_scale, 0.0,
                attention_kwargs, cache_kwargs,
            )  # fmt: skip

        decode_args = (decode_timestep, decode_noise_scale, generator, "pt", prompt_embeds.dtype)
        start = 0
        if video is not None:
            given, pixels = self._given_latents(video, height, width, device)
            if given.shape[2] >= F:
                raise ValueError(
                    f"video must be shorter than num_frames={num_frames}; got {len(video)} frames"
                )
            clean[:, :, : given.shape[2]] = given
            bounds = self.transformer.chunk_starts(given.shape[2])
            for s, e in zip(bounds[:-1], bounds[1:]):
                velocity(self.pack_latents(given[:, :, s:e]), 0.0, s, True)
            start = given.shape[2]
            original = (pixels.float().permute(0, 2, 1, 3, 4) + 1) / 2  # (1, G, 3, H, W) in [0, 1]
            yield (
                self.pack_latents(given)
                if output_type == "latent"
                else self.to_output_type(original, output_type)
            )

        # 6. Chunk loop: denoise in a few steps, write the clean chunk into the cache, decode, hand out.
        bounds = [b for b in self.transformer.chunk_starts(F) if b >= start]  # the last chunk may be shorter
        with self.progress_bar(total=len(bounds) - 1) as progress_bar:
            for s, e in zip(bounds[:-1], bounds[1:]):
                if self._interrupt:
                    break
                x = self.pack_latents(noise[:, :, s:e])  # (B, n, C)
                for i, sigma in enumerate(sigmas):
                    x0 = x - sigma * velocity(x, sigma, s, False)
                    if i + 1 < len(sigmas):
                        eps = randn_tensor(x0.shape, generator=generator, device=device, dtype=x0.dtype)
                        x = (1 - sigmas[i + 1]) * x0 + sigmas[i + 1] * eps
                if e < F:  # context pass: the chunk's clean keys and values, for the chunks after it
                    velocity(x0, 0.0, s, True)
                clean[:, :, s:e] = self.unpack_latents(x0, (e - s, *grid[1:]))
                progress_bar.update()
                if output_type == "latent":
                    yield x0
                    continue
                frames = self._decode_chunk(clean, s, e, decode_context_frames, decode_args)
                yield self.to_output_type(frames, output_type)
        self.maybe_free_model_hooks()

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        video=None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_chunk_end: Callable | None = None,
        **kwargs,
    ) -> VidGenPipelineOutput | tuple:
        r"""Generate the whole video: the chunks of :meth:`stream`, joined.

        ``callback_on_chunk_end(pipe, chunk_index, frames)`` sees each chunk's frames (``(B, f, 3, H, W)``
        in [0, 1], or packed latents) as soon as they exist. Other arguments: as :meth:`stream`.
        Returns ``VidGenPipelineOutput`` with ``.frames`` (the given frames included when extending).
        """
        chunks = []
        inner_type = "latent" if output_type == "latent" else "pt"
        for i, frames in enumerate(
            self.stream(prompt, negative_prompt, video, output_type=inner_type, **kwargs)
        ):
            if callback_on_chunk_end is not None:
                callback_on_chunk_end(self, i, frames)
            chunks.append(frames)
        video_out = torch.cat(chunks, dim=1)
        if output_type != "latent":
            video_out = self.to_output_type(video_out, output_type)
        return VidGenPipelineOutput(frames=video_out) if return_dict else (video_out,)
