from .common import VidGenPipelineOutput
from .pipeline_vidgen import VidGenPipeline
from .pipeline_vidgen_image2video import VidGenImageToVideoPipeline
from .pipeline_vidgen_masked import VidGenMaskedVideoPipeline

__all__ = [
    "VidGenImageToVideoPipeline",
    "VidGenMaskedVideoPipeline",
    "VidGenPipeline",
    "VidGenPipelineOutput",
]
