from .common import VidGenPipelineOutput
from .pipeline_vidgen import VidGenPipeline
from .pipeline_vidgen_image2video import VidGenImageToVideoPipeline

__all__ = ["VidGenImageToVideoPipeline", "VidGenPipeline", "VidGenPipelineOutput"]
