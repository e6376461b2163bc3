from .scheduling_rectified_flow import LTX_SCHEDULER_CONFIG, VidGenFlowMatchScheduler

__all__ = ["LTX_SCHEDULER_CONFIG", "VidGenFlowMatchScheduler"]
