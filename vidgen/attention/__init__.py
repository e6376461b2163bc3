"""Attention kinds that replace a video transformer's self-attention without retraining.

- :func:`apply_draft_attention`: DraftAttention, low-resolution-guided block-sparse attention (speed).
- :func:`apply_freeswim`: FreeSwim, inward sliding windows with a full-attention dual path (high resolution).
- :func:`reset_attention`: back to dense attention, exactly.

They install on ``vidgen.VidGenTransformer3DModel`` and on diffusers' ``LTXVideoTransformer3DModel`` and
``WanTransformer3DModel``; vidgen's pipelines also offer ``pipe.enable_draft_attention(...)`` and
``pipe.enable_freeswim(...)``. The block-sparse kernels live in :mod:`vidgen.models.block_sparse`.
"""

from .base import AttentionKind, conditional_rows
from .draft import DraftAttention, DraftAttentionConfig, draft_pattern
from .freeswim import FreeSwim, FreeSwimConfig, window_pattern, window_rule
from .install import apply_draft_attention, apply_freeswim, installed_attention, reset_attention

__all__ = [
    "AttentionKind",
    "DraftAttention",
    "DraftAttentionConfig",
    "FreeSwim",
    "FreeSwimConfig",
    "apply_draft_attention",
    "apply_freeswim",
    "conditional_rows",
    "draft_pattern",
    "installed_attention",
    "reset_attention",
    "window_pattern",
    "window_rule",
]
