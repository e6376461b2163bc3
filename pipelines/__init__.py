from .common import VidGenPipelineOutput
from .pipeline_vidgen import (
    TURBO2K_GUIDANCE_SCALE,
    TURBO2K_SUBFOLDER,
    TURBO2K_VAE_SUBFOLDER,
    VidGenPipeline,
    save_turbo2k_student,
    turbo2k_components,
)
from .pipeline_vidgen_autoregressive import (
    CAUSAL_SUBFOLDER,
    CAUSAL_TEXT_ENCODER_SUBFOLDER,
    STREAMING_VAE_SUBFOLDER,
    VidGenAutoregressivePipeline,
    causal_components,
)
from .pipeline_vidgen_hierarchical import HIERARCHICAL_SUBFOLDER, VidGenHierarchicalPipeline
from .pipeline_vidgen_image2video import VidGenImageToVideoPipeline
from .pipeline_vidgen_masked import VidGenMaskedVideoPipeline
from .pipeline_vidgen_video2video import VidGenVideoToVideoPipeline, generate_high_resolution

__all__ = [
    "CAUSAL_SUBFOLDER",
    "CAUSAL_TEXT_ENCODER_SUBFOLDER",
    "HIERARCHICAL_SUBFOLDER",
    "STREAMING_VAE_SUBFOLDER",
    "TURBO2K_GUIDANCE_SCALE",
    "TURBO2K_SUBFOLDER",
    "TURBO2K_VAE_SUBFOLDER",
    "VidGenAutoregressivePipeline",
    "VidGenHierarchicalPipeline",
    "VidGenImageToVideoPipeline",
    "VidGenMaskedVideoPipeline",
    "VidGenPipeline",
    "VidGenPipelineOutput",
    "VidGenVideoToVideoPipeline",
    "causal_components",
    "generate_high_resolution",
    "save_turbo2k_student",
    "turbo2k_components",
]
