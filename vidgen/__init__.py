"""vidgen: diffusers-style video diffusion pipelines (video VAE + DiT)."""

from pathlib import Path as _Path

from diffusers import ModelMixin, SchedulerMixin  # noqa: F401  (looked up by diffusers' loader)

from . import _diffusers_loading, attention  # noqa: F401  (vidgen.attention: sparse and window attention)
from .models import (
    FeatureProjector,
    HierarchicalAdapter,
    KVCache,
    VidGenTransformer3DModel,
    VidGenVideoAutoencoder,
    make_vae,
)
from .pipelines import (
    CAUSAL_SUBFOLDER,
    CAUSAL_TEXT_ENCODER_SUBFOLDER,
    HIERARCHICAL_SUBFOLDER,
    STREAMING_VAE_SUBFOLDER,
    TURBO2K_SUBFOLDER,
    TURBO2K_VAE_SUBFOLDER,
    VidGenAutoregressivePipeline,
    VidGenHierarchicalPipeline,
    VidGenImageToVideoPipeline,
    VidGenMaskedVideoPipeline,
    VidGenPipeline,
    VidGenPipelineOutput,
    VidGenVideoToVideoPipeline,
    causal_components,
    save_turbo2k_student,
    turbo2k_components,
)
from .schedulers import VidGenFlowMatchScheduler
from .video_io import export_to_video, load_image, load_video

_diffusers_loading.register()

__version__ = "0.1.0"
DEFAULT_MODEL = str(_Path(__file__).parent / "default_model")
"""Path of the embedded default pipeline folder (the Shapes-world model)."""

__all__ = [
    "CAUSAL_SUBFOLDER",
    "CAUSAL_TEXT_ENCODER_SUBFOLDER",
    "FeatureProjector",
    "HIERARCHICAL_SUBFOLDER",
    "HierarchicalAdapter",
    "STREAMING_VAE_SUBFOLDER",
    "TURBO2K_SUBFOLDER",
    "TURBO2K_VAE_SUBFOLDER",
    "KVCache",
    "VidGenAutoregressivePipeline",
    "VidGenHierarchicalPipeline",
    "VidGenFlowMatchScheduler",
    "VidGenImageToVideoPipeline",
    "VidGenMaskedVideoPipeline",
    "VidGenPipeline",
    "VidGenPipelineOutput",
    "VidGenTransformer3DModel",
    "VidGenVideoAutoencoder",
    "VidGenVideoToVideoPipeline",
    "causal_components",
    "save_turbo2k_student",
    "turbo2k_components",
    "export_to_video",
    "load_image",
    "load_video",
    "make_vae",
]
