"""vidgen: diffusers-style video diffusion pipelines (video VAE + DiT)."""

__version__ = "0.1.0"

from diffusers import ModelMixin, SchedulerMixin  # noqa: F401  (looked up by diffusers' loader)

from . import _diffusers_loading
from .models import KVCache, VidGenTransformer3DModel, VidGenVideoAutoencoder, make_vae
from .pipelines import VidGenImageToVideoPipeline, VidGenPipeline, VidGenPipelineOutput
from .schedulers import VidGenFlowMatchScheduler
from .video_io import export_to_video, load_image, load_video

_diffusers_loading.register()

__all__ = [
    "KVCache",
    "VidGenFlowMatchScheduler",
    "VidGenImageToVideoPipeline",
    "VidGenPipeline",
    "VidGenPipelineOutput",
    "VidGenTransformer3DModel",
    "VidGenVideoAutoencoder",
    "export_to_video",
    "load_image",
    "load_video",
    "make_vae",
]
