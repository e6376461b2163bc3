"""Turbo2K's two trainable parts: the feature projector of heterogeneous distillation and the adapter of
two-stage hierarchical synthesis, with the token-grid maps between latent spaces that both need.

Turbo2K (arXiv 2504.14470) has no public code; what the paper confirms and what is decided here:

- **Distillation across latent spaces** [paper]: a teacher DiT and a smaller student DiT, each in its
  own VAE's latent space, see the same video at the same noise level; the student's hidden states at
  one block, through a trainable projector, are pulled towards the teacher's hidden states at one block
  by negative cosine similarity, on top of the student's own diffusion loss.
  Decided here: the projector is an MLP with SiLU (REPA's); the token grids are aligned by average-
  pooling the teacher's (finer) grid onto the student's, because pooling keeps the teacher's features
  as they are, averaged, whereas upsampling the student would ask it to invent detail its grid lacks.
- **Hierarchical synthesis** [paper]: a low-resolution generation keeps multi-level DiT features (no
  VAE decode); the high-resolution generation's DiT is guided by them.
  Decided here: the features are the DiT's block outputs on the clean low-resolution latent (one extra
  forward at timestep 0, so stage two gets the same guidance at every step); they are upsampled to the
  high-resolution token grid (nearest: a token's feature is the feature of the region it lies in) and
  added to the same blocks' outputs through zero-initialised linear adapters (ControlNet-style), so
  an untrained adapter leaves the DiT exactly as it was.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

Grid = tuple[int, int, int]


def pool_tokens(x: torch.Tensor, grid: Grid, target: Grid) -> torch.Tensor:
    """Average-pool tokens ``(B, F*H*W, D)`` on ``grid`` onto the coarser ``target`` grid (each axis an
    integer divisor of ``grid``'s): ``(B, F'*H'*W', D)``."""
    if any(g % t for g, t in zip(grid, target)):
        raise ValueError(f"target grid {target} must divide the token grid {grid} on every axis")
    B, N, D = x.shape
    cube = x.transpose(1, 2).reshape(B, D, *grid)  # (B, D, F, H, W)
    kernel = tuple(g // t for g, t in zip(grid, target))
    return F.avg_pool3d(cube, kernel).flatten(2).transpose(1, 2)  # (B, N', D)


def upsample_tokens(x: torch.Tensor, grid: Grid, target: Grid) -> torch.Tensor:
    """Nearest-neighbour upsampling of tokens ``(B, F*H*W, D)`` on ``grid`` to the ``target`` grid."""
    B, N, D = x.shape
    cube = x.transpose(1, 2).reshape(B, D, *grid)  # (B, D, F, H, W)
    return F.interpolate(cube, size=target, mode="nearest").flatten(2).transpose(1, 2)  # (B, N', D)


def alignment_loss(teacher: torch.Tensor, student_projected: torch.Tensor) -> torch.Tensor:
    """Negative cosine similarity per token, averaged: ``(B, N, D)`` twice -> scalar in [-1, 1]."""
    return -F.cosine_similarity(student_projected, teacher.detach(), dim=-1).mean()


class FeatureProjector(ModelMixin, ConfigMixin):
    r"""``p_phi``: the student's hidden states ``(B, N, student_dim)`` -> the teacher's feature space
    ``(B, N, teacher_dim)``; an MLP of ``num_layers`` linear layers with SiLU between them."""

    @register_to_config
    def __init__(
        self, student_dim: int, teacher_dim: int, hidden_dim: int | None = None, num_layers: int = 2
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1; got {num_layers}")
        hidden_dim = hidden_dim or 2 * teacher_dim
        widths = [student_dim] + [hidden_dim] * (num_layers - 1) + [teacher_dim]
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers += [nn.Linear(widths[i], widths[i + 1])] + ([nn.SiLU()] if i < num_layers - 1 else [])
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class HierarchicalAdapter(ModelMixin, ConfigMixin):
    r"""Stage-two guidance: low-resolution DiT features of ``blocks`` -> residuals added to the same
    blocks of the high-resolution DiT.

    Per block: LayerNorm (the features' scale grows with depth), then a zero-initialised linear layer,
    so the adapter starts as a no-op. The residuals are computed on the low-resolution grid, then
    upsampled (the same residual for every high-resolution token of a low-resolution token's region).

    Args:
        dim: the DiT's width (``num_attention_heads * attention_head_dim``).
        blocks: indices of the DiT blocks whose features guide and are guided.
    """

    @register_to_config
    def __init__(self, dim: int, blocks: tuple[int, ...] = (1, 3)):
        super().__init__()
        if not blocks or len(set(blocks)) != len(blocks) or min(blocks) < 0:
            raise ValueError(f"blocks must be distinct block indices >= 0; got {blocks}")
        self.norms = nn.ModuleList(nn.LayerNorm(dim, elementwise_affine=False) for _ in blocks)
        self.projections = nn.ModuleList(nn.Linear(dim, dim) for _ in blocks)
        for proj in self.projections:
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self, hidden_states: tuple[torch.Tensor, ...], grid: Grid, target: Grid
    ) -> dict[int, torch.Tensor]:
        """``hidden_states``: every block's output ``(B, N_low, D)`` on the low-resolution ``grid`` (the
        transformer's ``output_hidden_states``). Returns ``{block: (B, N_high, D)}`` on ``target``, the
        transformer's ``block_residuals``."""
        if max(self.config.blocks) >= len(hidden_states):
            raise ValueError(
                f"the adapter guides blocks {self.config.blocks} but the transformer has {len(hidden_states)}"
            )
        residuals = {}
        for block, norm, proj in zip(self.config.blocks, self.norms, self.projections):
            r = proj(norm(hidden_states[block]))  # (B, N_low, D)
            residuals[block] = upsample_tokens(r, grid, target)  # (B, N_high, D)
        return residuals
