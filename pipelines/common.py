"""What vidgen's video pipelines share: components, input checks, prompt encoding, latent packing,
guided velocity prediction and LTX-style decoding.

The pipelines run vidgen's own ``VidGenTransformer3DModel`` or diffusers' ``LTXVideoTransformer3DModel``
(real LTX-Video checkpoints) with diffusers' ``AutoencoderKLLTXVideo`` and any transformers text encoder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import (
    AutoencoderKLLTXVideo,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    LTXVideoTransformer3DModel,
)
from diffusers.loaders import LTXVideoLoraLoaderMixin, TextualInversionLoaderMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from safetensors.torch import load_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..attention import (
    apply_draft_attention,
    apply_freeswim,
    conditional_rows,
    installed_attention,
    reset_attention,
)
from ..attention.draft import DraftAttention
from ..attention.freeswim import FreeSwim
from ..models import VidGenTransformer3DModel, VidGenVideoAutoencoder
from ..schedulers import VidGenFlowMatchScheduler

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# Classifier-free guidance of the bidirectional pipelines. 2 was the best of 1, 1.5, 2, 3 and 6 on the
# embedded default model's evaluator (every task; 3 and above add objects and smear colors); pass
# LTX-Video's own 3 for its checkpoints.
DEFAULT_GUIDANCE_SCALE = 2.0
# LTX-Video's official decode settings for timestep-conditioned VAEs (0.9.1+ configs).
DEFAULT_DECODE_TIMESTEP = 0.05
DEFAULT_DECODE_NOISE_SCALE = 0.025
# Learned input embeddings of new words (textual inversion), as diffusers names the file.
LEARNED_EMBEDS_NAME = "learned_embeds.safetensors"
# Used when the transformer does not record the size it was trained at (LTX-Video's defaults).
FALLBACK_VIDEO_SIZE = (161, 512, 704)


@dataclass
class VidGenPipelineOutput(BaseOutput):
    """``frames``: list (batch) of lists of PIL images, ``(B, F, H, W, 3)`` array, ``(B, F, 3, H, W)``
    tensor, or packed latents ``(B, N, C)``, by ``output_type``."""

    frames: list | np.ndarray | torch.Tensor


def _adapters(module) -> list[str]:
    """Names of the peft adapters in ``module`` (none for a module without any, or ``None``)."""
    return list(getattr(module, "peft_config", None) or {})


def rescale_noise_cfg(noise_cfg: torch.Tensor, noise_pred_text: torch.Tensor, guidance_rescale: float):
    """Guidance rescale (Lin et al. 2023, sec. 3.4): match the guided prediction's std to the text one."""
    std_text = noise_pred_text.std(dim=list(range(1, noise_pred_text.ndim)), keepdim=True)
    std_cfg = noise_cfg.std(dim=list(range(1, noise_cfg.ndim)), keepdim=True)
    rescaled = noise_cfg * (std_text / std_cfg)
    return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg


class VidGenPipelineBase(DiffusionPipeline, LTXVideoLoraLoaderMixin, TextualInversionLoaderMixin):
    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _callback_tensor_inputs = ["latents", "prompt_embeds"]

    def __init__(
        self,
        vae: AutoencoderKLLTXVideo | VidGenVideoAutoencoder,
        text_encoder: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        transformer: VidGenTransformer3DModel | LTXVideoTransformer3DModel,
        scheduler: FlowMatchEulerDiscreteScheduler,
        default_guidance_scale: float | None = None,
    ):
        super().__init__()
        if default_guidance_scale is not None and not default_guidance_scale >= 0:
            raise ValueError(f"default_guidance_scale must be >= 0 or None; got {default_guidance_scale}")
        if type(scheduler) is FlowMatchEulerDiscreteScheduler:
            # Same schedule, plus the token-count shift and per-token steps the pipelines rely on.
            scheduler = VidGenFlowMatchScheduler.from_config(scheduler.config)
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
            scheduler=scheduler,
        )
        # The guidance this folder's model was chosen at (model_index.json; None: DEFAULT_GUIDANCE_SCALE).
        # A distilled student samples best without guidance, so its folder says 1.
        self.register_to_config(default_guidance_scale=default_guidance_scale)
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_spatial_compression_ratio)

    # ----------------------------------------------------------------------------------------------
    # Sizes derived from the components.
    @property
    def vae_spatial_compression_ratio(self) -> int:
        return self.vae.spatial_compression_ratio

    @property
    def vae_temporal_compression_ratio(self) -> int:
        return self.vae.temporal_compression_ratio

    @property
    def patch_size(self) -> tuple[int, int]:
        """Transformer packing ``(patch_size_t, patch_size)``."""
        return self.transformer.config.patch_size_t, self.transformer.config.patch_size

    @property
    def default_video_size(self) -> tuple[int, int, int]:
        """``(num_frames, height, width)`` in pixels: the size the transformer was trained at."""
        sample_size = getattr(self.transformer.config, "sample_size", None)
        if sample_size is None:
            return FALLBACK_VIDEO_SIZE
        f, h, w = sample_size
        return (
            (f - 1) * self.vae_temporal_compression_ratio + 1,
            h * self.vae_spatial_compression_ratio,
            w * self.vae_spatial_compression_ratio,
        )

    @property
    def default_frame_rate(self) -> float:
        """Frames per second the model was trained at (LTX-Video's 25 when it does not say)."""
        return getattr(self.transformer.config, "sample_frame_rate", None) or 25.0

    def resolve_guidance_scale(self, guidance_scale: float | None) -> float:
        """``guidance_scale``, or when ``None`` the folder's ``default_guidance_scale`` (model_index.json),
        or ``DEFAULT_GUIDANCE_SCALE`` when the folder does not say."""
        if guidance_scale is not None:
            return guidance_scale
        folder_default = self.config.get("default_guidance_scale")
        return DEFAULT_GUIDANCE_SCALE if folder_default is None else folder_default

    def resolve_video_size(self, num_frames, height, width, fallback_hw=None) -> tuple[int, int, int]:
        """Fill sizes left as ``None`` with the model's training size (height and width: ``fallback_hw``
        when given, e.g. the conditioning image's)."""
        f, h, w = self.default_video_size
        h, w = fallback_hw or (h, w)
        return (
            f if num_frames is None else num_frames,
            h if height is None else height,
            w if width is None else width,
        )

    def token_grid(self, latent_grid: tuple[int, int, int]) -> tuple[int, int, int]:
        """The transformer's token grid over a latent grid (its packing ``patch_size_t x patch_size^2``)."""
        p_t, p = self.patch_size
        return latent_grid[0] // p_t, latent_grid[1] // p, latent_grid[2] // p

    def latent_grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Latent ``(F, H, W)`` of a pixel video (the VAE encodes the first frame alone)."""
        return (
            (num_frames - 1) // self.vae_temporal_compression_ratio + 1,
            height // self.vae_spatial_compression_ratio,
            width // self.vae_spatial_compression_ratio,
        )

    # ----------------------------------------------------------------------------------------------
    # Input checks: every rule names the argument; nothing is rounded silently.
    def check_inputs(
        self,
        prompt,
        negative_prompt,
        height,
        width,
        num_frames,
        frame_rate,
        num_inference_steps,
        guidance_scale,
        guidance_rescale,
        prompt_embeds,
        prompt_attention_mask,
        negative_prompt_embeds,
        negative_prompt_attention_mask,
        latents,
        generator,
        num_videos_per_prompt,
        output_type,
        callback_on_step_end_tensor_inputs,
    ) -> int:
        """Validate the common arguments; return the prompt batch size."""
        p_t, p = self.patch_size
        s, t = self.vae_spatial_compression_ratio * p, self.vae_temporal_compression_ratio
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value < s or value % s:
                hint = f", try {max(s, round(value / s) * s)}" if isinstance(value, int | float) else ""
                raise ValueError(
                    f"{name} must be a positive multiple of {s} (VAE spatial compression x patch size); got {value}{hint}"
                )
        if not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % t:
            hint = (
                f", try {max(1, round((num_frames - 1) / t)) * t + 1}" if isinstance(num_frames, int) else ""
            )
            raise ValueError(
                f"num_frames must be of the form k*{t} + 1 (num_frames - 1 divisible by the VAE temporal "
                f"compression {t}); got {num_frames}{hint}"
            )
        if ((num_frames - 1) // t + 1) % p_t:
            raise ValueError(
                f"the number of latent frames must be a multiple of patch_size_t={p_t}; got num_frames={num_frames}"
            )
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1; got {num_inference_steps}")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0; got {guidance_scale}")
        if not 0 <= guidance_rescale <= 1:
            raise ValueError(f"guidance_rescale must be in [0, 1]; got {guidance_rescale}")
        if frame_rate <= 0:
            raise ValueError(f"frame_rate must be > 0; got {frame_rate}")
        if not isinstance(num_videos_per_prompt, int) or num_videos_per_prompt < 1:
            raise ValueError(f"num_videos_per_prompt must be an integer >= 1; got {num_videos_per_prompt}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}; got {output_type!r}")
        unknown = set(callback_on_step_end_tensor_inputs or []) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs must be among {self._callback_tensor_inputs}; got {sorted(unknown)}"
            )

        # Prompt: exactly one of `prompt` and `prompt_embeds`.
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError(
                "pass exactly one of `prompt` and `prompt_embeds`; got "
                + ("both" if prompt is not None else "neither")
            )
        if prompt is not None:
            if not isinstance(prompt, str) and not (
                isinstance(prompt, list) and prompt and all(isinstance(x, str) for x in prompt)
            ):
                raise ValueError(
                    f"prompt must be a string or a non-empty list of strings; got {type(prompt).__name__}"
                )
            if self.text_encoder is None or self.tokenizer is None:
                raise ValueError(
                    "prompt needs a text_encoder and tokenizer; this pipeline has none, pass prompt_embeds"
                )
            batch_size = 1 if isinstance(prompt, str) else len(prompt)
        else:
            if prompt_embeds.ndim != 3:
                raise ValueError(f"prompt_embeds must be (B, T, C); got shape {tuple(prompt_embeds.shape)}")
            if prompt_attention_mask is None or prompt_attention_mask.shape != prompt_embeds.shape[:2]:
                raise ValueError(
                    f"prompt_attention_mask must be given with prompt_embeds, shaped {tuple(prompt_embeds.shape[:2])}"
                )
            batch_size = prompt_embeds.shape[0]
            if guidance_scale > 1 and negative_prompt_embeds is None and self.text_encoder is None:
                raise ValueError(
                    "guidance_scale > 1 with prompt_embeds needs negative_prompt_embeds (this pipeline has no "
                    "text_encoder to encode the negative prompt); pass them, or guidance_scale=1"
                )
        if isinstance(negative_prompt, list) and len(negative_prompt) != batch_size:
            raise ValueError(
                f"negative_prompt has {len(negative_prompt)} entries but the prompt batch size is {batch_size}"
            )
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("pass at most one of `negative_prompt` and `negative_prompt_embeds`; got both")
        if negative_prompt_embeds is not None:
            if prompt_embeds is None or negative_prompt_embeds.shape != prompt_embeds.shape:
                raise ValueError(
                    "negative_prompt_embeds must come with prompt_embeds of the same shape; got "
                    f"{tuple(negative_prompt_embeds.shape)} vs "
                    f"{None if prompt_embeds is None else tuple(prompt_embeds.shape)}"
                )
            if (
                negative_prompt_attention_mask is None
                or negative_prompt_attention_mask.shape != negative_prompt_embeds.shape[:2]
            ):
                raise ValueError(
                    "negative_prompt_attention_mask must be given with negative_prompt_embeds, same (B, T)"
                )

        total = batch_size * num_videos_per_prompt
        if isinstance(generator, list) and len(generator) != total:
            raise ValueError(f"generator list has {len(generator)} entries but the batch is {total} videos")
        if latents is not None:
            F, H, W = self.latent_grid(num_frames, height, width)
            n = (F // p_t) * (H // p) * (W // p)
            c = self.transformer.config.in_channels
            if latents.shape != (total, n, c):
                raise ValueError(
                    f"latents must be packed (B, N, C) = {(total, n, c)} for this size and batch; got {tuple(latents.shape)}"
                )
        return batch_size

    # ----------------------------------------------------------------------------------------------
    # LoRA: diffusers' LTX-Video loader for the transformer, plus the text encoder. One file may hold
    # both, as diffusers writes them: keys under "transformer." and under "text_encoder." (what
    # ``vidgen train-lora`` saves with ``text_encoder_lora.rank`` > 0). set_adapters, fuse_lora,
    # unfuse_lora and unload_lora_weights then act on both components.
    _lora_loadable_modules = ["transformer", "text_encoder"]
    text_encoder_name = "text_encoder"

    def load_lora_weights(
        self, pretrained_model_name_or_path_or_dict, adapter_name=None, hotswap=False, **kwargs
    ):
        """Load a LoRA in diffusers' format into the transformer and, where the file has keys under
        ``text_encoder.``, into the text encoder under the same adapter name."""
        low_cpu_mem_usage = kwargs.pop("low_cpu_mem_usage", False)
        source = pretrained_model_name_or_path_or_dict
        if isinstance(source, dict):
            source = source.copy()
        state_dict, metadata = self.lora_state_dict(source, return_lora_metadata=True, **kwargs)
        if not all("lora" in key for key in state_dict):
            raise ValueError("Invalid LoRA checkpoint: every parameter name must contain 'lora'")
        prefix = f"{self.text_encoder_name}."
        text = {k: v for k, v in state_dict.items() if k.startswith(prefix)}
        if text and self.text_encoder is None:
            raise ValueError("this LoRA has text-encoder layers, but the pipeline has no text_encoder")
        if text and hotswap:
            raise ValueError("hotswap: not supported for a LoRA with text-encoder layers")
        in_use = {n for m in (self.transformer, self.text_encoder) for n in _adapters(m)}
        if adapter_name is None:  # one name for both components (diffusers' default_N)
            adapter_name = next(
                f"default_{i}" for i in range(len(in_use) + 1) if f"default_{i}" not in in_use
            )
        if text and adapter_name in _adapters(self.text_encoder):
            raise ValueError(f"adapter_name {adapter_name!r} is already in use by the text encoder")
        if len(text) < len(state_dict):
            rest = {k: v for k, v in state_dict.items() if not k.startswith(prefix)}
            self.load_lora_into_transformer(rest, transformer=self.transformer, adapter_name=adapter_name,
                                            metadata=metadata, _pipeline=self, hotswap=hotswap,
                                            low_cpu_mem_usage=low_cpu_mem_usage)  # fmt: skip
        if text:
            self._load_text_encoder_lora(text, metadata, adapter_name)

    def _load_text_encoder_lora(self, state_dict, metadata, adapter_name) -> None:
        """Inject a LoRA into the text encoder with peft itself. (diffusers' text-encoder loader goes
        through transformers' ``load_adapter``, which newer transformers refuse with the peft releases
        diffusers supports; peft's own injection works with any of them.)"""
        from diffusers.utils.peft_utils import _create_lora_config
        from peft import inject_adapter_in_model
        from peft.utils import set_peft_model_state_dict

        prefix = f"{self.text_encoder_name}."
        state_dict = {k.removeprefix(prefix): v for k, v in state_dict.items()}
        if metadata is not None:
            metadata = {
                k.removeprefix(prefix): v for k, v in metadata.items() if k.startswith(prefix)
            } or None
        ranks = {k: v.shape[1] for k, v in state_dict.items() if k.endswith("lora_B.weight")}
        config = _create_lora_config(state_dict, None, metadata, ranks, is_unet=False)
        inject_adapter_in_model(config, self.text_encoder, adapter_name=adapter_name)
        result = set_peft_model_state_dict(self.text_encoder, state_dict, adapter_name)
        missing = [k for k in result.missing_keys if "lora_" in k and f".{adapter_name}." in k]
        if result.unexpected_keys or missing:
            raise ValueError(
                f"the LoRA's text-encoder layers do not match this text encoder "
                f"({len(result.unexpected_keys)} unexpected, {len(missing)} missing)"
            )

    @classmethod
    def save_lora_weights(
        cls,
        save_directory,
        transformer_lora_layers=None,
        text_encoder_lora_layers=None,
        is_main_process: bool = True,
        weight_name: str | None = None,
        save_function=None,
        safe_serialization: bool = True,
        transformer_lora_adapter_metadata: dict | None = None,
        text_encoder_lora_adapter_metadata: dict | None = None,
    ):
        """diffusers' LoRA file: ``transformer.*`` and, when given, ``text_encoder.*`` layers, each with
        its peft config (rank, alpha, targets) as metadata."""
        layers, metadata = {}, {}
        for name, lora, meta in (
            (cls.transformer_name, transformer_lora_layers, transformer_lora_adapter_metadata),
            (cls.text_encoder_name, text_encoder_lora_layers, text_encoder_lora_adapter_metadata),
        ):
            if lora:
                layers[name], metadata[name] = lora, meta
        if not layers:
            raise ValueError("save_lora_weights: pass transformer_lora_layers or text_encoder_lora_layers")
        cls._save_lora_weights(
            save_directory=save_directory, lora_layers=layers, lora_metadata=metadata,
            is_main_process=is_main_process, weight_name=weight_name, save_function=save_function,
            safe_serialization=safe_serialization,
        )  # fmt: skip

    def _components_with_lora(self) -> list[str]:
        return [c for c in self._lora_loadable_modules if _adapters(getattr(self, c, None))]

    def fuse_lora(self, components: list[str] | None = None, lora_scale: float = 1.0, **kwargs):
        """diffusers' ``fuse_lora``; by default on every component that holds a LoRA."""
        components = self._components_with_lora() if components is None else components
        super().fuse_lora(components=components, lora_scale=lora_scale, **kwargs)

    def unfuse_lora(self, components: list[str] | None = None, **kwargs):
        components = self._components_with_lora() if components is None else components
        super().unfuse_lora(components=components, **kwargs)

    # ----------------------------------------------------------------------------------------------
    def tokenize(self, prompt: list[str], max_sequence_length: int):
        """Token ids and attention mask ``(B, T)``, padded to ``max_sequence_length``; a learned word of
        several vectors (textual inversion) expands to its tokens first."""
        return self.tokenizer(
            self.maybe_convert_prompt(prompt, self.tokenizer),
            padding="max_length",
            max_length=max_sequence_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )

    def _text_embeddings(self, prompt: list[str], max_sequence_length: int, device, dtype):
        """T5-style encoding, as diffusers' LTX pipelines do it (padded to ``max_sequence_length``)."""
        inputs = self.tokenize(prompt, max_sequence_length)
        embeds = self.text_encoder(inputs.input_ids.to(device))[0]  # (B, T, C)
        return embeds.to(device=device, dtype=dtype), inputs.attention_mask.bool().to(device)

    def load_textual_inversion(self, pretrained_model_name_or_path, token=None, **kwargs):
        """diffusers' loader, plus the files ``vidgen train-lora`` writes for several words at once
        (``{word: (D,)}`` in one ``learned_embeds.safetensors``); a folder or a file."""
        source = pretrained_model_name_or_path
        if token is None and isinstance(source, str | os.PathLike):
            file = Path(source) / LEARNED_EMBEDS_NAME if Path(source).is_dir() else Path(source)
            if file.suffix == ".safetensors" and file.is_file():
                words = load_file(file)
                if len(words) > 1 and not {"string_to_param", "emb_params"} & words.keys():
                    source, token = [{w: e} for w, e in words.items()], list(words)
        return super().load_textual_inversion(source, token=token, **kwargs)

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        negative_prompt: str | list[str] | None = None,
        do_classifier_free_guidance: bool = True,
        num_videos_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        max_sequence_length: int = 128,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        """Return ``(embeds, mask, negative_embeds, negative_mask)``, each repeated ``num_videos_per_prompt``
        times (negatives are ``None`` without guidance)."""
        device = device or self._execution_device
        dtype = dtype or (self.text_encoder.dtype if self.text_encoder is not None else prompt_embeds.dtype)
        if prompt_embeds is None:
            prompt = [prompt] if isinstance(prompt, str) else prompt
            prompt_embeds, prompt_attention_mask = self._text_embeddings(
                prompt, max_sequence_length, device, dtype
            )
        batch_size = prompt_embeds.shape[0]
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative_prompt = negative_prompt or ""
            negative_prompt = (
                [negative_prompt] * batch_size if isinstance(negative_prompt, str) else negative_prompt
            )
            negative_prompt_embeds, negative_prompt_attention_mask = self._text_embeddings(
                negative_prompt, prompt_embeds.shape[1], device, dtype
            )
        if not do_classifier_free_guidance:
            negative_prompt_embeds = negative_prompt_attention_mask = None

        def repeat(x):
            return None if x is None else x.to(device).repeat_interleave(num_videos_per_prompt, dim=0)

        return (
            repeat(prompt_embeds).to(dtype),
            repeat(prompt_attention_mask),
            None if negative_prompt_embeds is None else repeat(negative_prompt_embeds).to(dtype),
            repeat(negative_prompt_attention_mask),
        )

    def encode_prompt_for_guidance(
        self, prompt, negative_prompt, do_classifier_free_guidance, num_videos_per_prompt, prompt_embeds,
        prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask, max_sequence_length, device,
    ):  # fmt: skip
        """``(embeds, mask)`` for the transformer: with guidance, ``[negative; positive]`` stacked on the batch."""
        max_sequence_length = max_sequence_length or min(
            128, getattr(self.tokenizer, "model_max_length", 128)
        )
        embeds, mask, negative_embeds, negative_mask = self.encode_prompt(
            prompt, negative_prompt, do_classifier_free_guidance, num_videos_per_prompt, prompt_embeds,
            prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask, max_sequence_length, device,
        )  # fmt: skip
        if do_classifier_free_guidance:
            return torch.cat([negative_embeds, embeds]), torch.cat([negative_mask, mask])
        return embeds, mask

    # ----------------------------------------------------------------------------------------------
    # Latents: (B, C, F, H, W) <-> packed tokens (B, N, C * p_t * p * p), N in (frame, row, column) order.
    def video_to_pixels(self, video, height: int, width: int) -> torch.Tensor:
        """Frames (list of PIL, ``(F, H, W, 3)`` array or ``(F, 3, H, W)`` tensor in [0, 1]) -> ``(1, 3, F, H, W)``."""
        if isinstance(video, np.ndarray) and video.dtype == np.uint8:
            video = video.astype(np.float32) / 255
        pixels = self.video_processor.preprocess_video(video, height=height, width=width)  # (1, 3, F, H, W)
        return pixels

    def pack_latents(self, latents: torch.Tensor) -> torch.Tensor:
        p_t, p = self.patch_size
        B, C, F, H, W = latents.shape
        x = latents.reshape(B, C, F // p_t, p_t, H // p, p, W // p, p)
        return x.permute(0, 2, 4, 6, 1, 3, 5, 7).flatten(4, 7).flatten(1, 3)

    def unpack_latents(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        p_t, p = self.patch_size
        F, H, W = grid
        B = tokens.shape[0]
        x = tokens.reshape(B, F // p_t, H // p, W // p, -1, p_t, p, p)
        return x.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(B, -1, F, H, W)

    def normalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        mean = self.vae.latents_mean.view(1, -1, 1, 1, 1).to(latents)
        std = self.vae.latents_std.view(1, -1, 1, 1, 1).to(latents)
        return (latents - mean) * self.vae.config.scaling_factor / std

    def denormalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        mean = self.vae.latents_mean.view(1, -1, 1, 1, 1).to(latents)
        std = self.vae.latents_std.view(1, -1, 1, 1, 1).to(latents)
        return latents * std / self.vae.config.scaling_factor + mean

    def prepare_noise(self, batch_size: int, grid, generator, device) -> torch.Tensor:
        """Unit Gaussian latents ``(B, C, F, H, W)`` in fp32 (drawn before packing, so a seed gives
        the same video whatever the transformer's patch size)."""
        C = self.transformer.config.in_channels // (self.patch_size[0] * self.patch_size[1] ** 2)
        return randn_tensor((batch_size, C, *grid), generator=generator, device=device, dtype=torch.float32)

    # ----------------------------------------------------------------------------------------------
    def predict_velocity(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        prompt_embeds: torch.Tensor,
        prompt_attention_mask: torch.Tensor,
        grid: tuple[int, int, int],
        frame_rate: float,
        guidance_scale: float,
        guidance_rescale: float = 0.0,
        attention_kwargs: dict | None = None,
        transformer_kwargs: dict | None = None,
    ) -> torch.Tensor:
        """Guided velocity for packed ``latents`` ``(B, N, C)`` at ``timestep`` ``(B,)``, ``(B, F)`` or ``(B, N)``.

        With guidance, ``prompt_embeds`` holds ``[negative; positive]`` (``2B`` rows) and the two
        predictions are combined as ``v_u + g * (v_c - v_u)``. ``transformer_kwargs`` go to the
        transformer as they are (``frame_offset``, ``kv_cache``, ``update_kv_cache`` of a rollout).
        """
        do_cfg = prompt_embeds.shape[0] == 2 * latents.shape[0]
        model_input = torch.cat([latents, latents]) if do_cfg else latents
        timestep = torch.cat([timestep, timestep]) if do_cfg else timestep
        extra = {**self.transformer_extra_kwargs(frame_rate), **(transformer_kwargs or {})}
        F, H, W = grid
        dtype = self.transformer.dtype
        rows = torch.arange(model_input.shape[0]) >= latents.shape[0] if do_cfg else None  # [uncond; cond]
        with conditional_rows(rows):  # FreeSwim runs its full branch on the conditional rows only
            v = self.transformer(
                hidden_states=model_input.to(dtype),
                encoder_hidden_states=prompt_embeds.to(dtype),
                timestep=timestep,
                encoder_attention_mask=prompt_attention_mask,
                num_frames=F,
                height=H,
                width=W,
                attention_kwargs=attention_kwargs,
                return_dict=False,
                **extra,
            )[0].float()
        if do_cfg:
            v_uncond, v_text = v.chunk(2)
            v = v_uncond + guidance_scale * (v_text - v_uncond)
            if guidance_rescale > 0:
                v = rescale_noise_cfg(v, v_text, guidance_rescale)
        return v

    def transformer_extra_kwargs(self, frame_rate: float) -> dict:
        """Keyword arguments a transformer family needs besides the common ones."""
        if isinstance(self.transformer, LTXVideoTransformer3DModel):
            # LTX-Video's RoPE works in pixel units: (temporal stride / fps, spatial stride, spatial stride).
            s, t = self.vae_spatial_compression_ratio, self.vae_temporal_compression_ratio
            return {"rope_interpolation_scale": (t / frame_rate, s, s)}
        return {}

    def decode_latents(
        self,
        latents: torch.Tensor,
        grid: tuple[int, int, int],
        decode_timestep: float | None,
        decode_noise_scale: float | None,
        generator,
        output_type: str,
        dtype: torch.dtype,
    ):
        """Packed latents -> video. A timestep-conditioned VAE decoder does the last denoising step:
        re-noise with ``decode_noise_scale`` and decode at ``decode_timestep`` (LTX's recipe)."""
        if output_type == "latent":
            return latents
        latents = self.denormalize_latents(self.unpack_latents(latents, grid)).to(dtype)
        timestep = None
        if self.vae.config.timestep_conditioning:
            decode_timestep = DEFAULT_DECODE_TIMESTEP if decode_timestep is None else decode_timestep
            decode_noise_scale = (
                DEFAULT_DECODE_NOISE_SCALE if decode_noise_scale is None else decode_noise_scale
            )
            noise = randn_tensor(
                latents.shape, generator=generator, device=latents.device, dtype=latents.dtype
            )
            latents = (1 - decode_noise_scale) * latents + decode_noise_scale * noise
            timestep = torch.full(
                (latents.shape[0],), decode_timestep, device=latents.device, dtype=latents.dtype
            )
        video = self.vae.decode(latents.to(self.vae.dtype), timestep, return_dict=False)[0]  # (B, 3, F, H, W)
        return self.video_processor.postprocess_video(video, output_type=output_type)

    @staticmethod
    def to_output_type(video: torch.Tensor, output_type: str):
        """``(B, F, 3, H, W)`` in [0, 1] -> ``"pt"`` as is, ``"np"`` ``(B, F, H, W, 3)``, ``"pil"`` lists."""
        if output_type == "pt":
            return video
        array = video.permute(0, 1, 3, 4, 2).cpu().float().numpy()
        if output_type == "np":
            return array
        return [[PIL.Image.fromarray((f * 255).round().astype(np.uint8)) for f in v] for v in array]

    # ----------------------------------------------------------------------------------------------
    # Attention kinds (vidgen.attention) on the transformer.
    def enable_draft_attention(self, sparsity: float = 0.9, **kwargs) -> None:
        """DraftAttention block-sparse self-attention; ``kwargs`` as in :func:`vidgen.attention.apply_draft_attention`."""
        apply_draft_attention(self.transformer, sparsity=sparsity, **kwargs)

    def disable_draft_attention(self) -> None:
        if isinstance(installed_attention(self.transformer), DraftAttention):
            reset_attention(self.transformer)

    def enable_freeswim(self, train_size: tuple[int, int] | None = None, **kwargs) -> None:
        """FreeSwim inward-window self-attention for sizes above training.

        ``train_size``: the training resolution in pixels ``(height, width)`` (default: the model's size);
        ``kwargs`` as in :func:`vidgen.attention.apply_freeswim`.
        """
        _, h, w = self.default_video_size if train_size is None else (None, *train_size)
        s = self.vae_spatial_compression_ratio * self.patch_size[1]
        if h % s or w % s:
            raise ValueError(f"train_size must be multiples of {s} pixels; got {(h, w)}")
        apply_freeswim(self.transformer, train_size=(h // s, w // s), **kwargs)

    def disable_freeswim(self) -> None:
        if isinstance(installed_attention(self.transformer), FreeSwim):
            reset_attention(self.transformer)

    def run_callback(self, callback, step: int, t, tensor_names, local_vars: dict) -> dict:
        """diffusers' ``callback_on_step_end`` protocol: the callback may replace the named tensors."""
        if callback is None:
            return {}
        return callback(self, step, t, {name: local_vars[name] for name in tensor_names}) or {}

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` from a step callback to stop after the current step."""
        return self._interrupt
