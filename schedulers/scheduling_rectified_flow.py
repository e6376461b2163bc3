"""Rectified-flow Euler scheduler with LTX-Video's token-count shift and per-token timesteps.

diffusers' ``FlowMatchEulerDiscreteScheduler`` already does the Euler update, dynamic (exponential)
shifting from a ``mu`` and the stretch of the shifted schedule to a terminal sigma. This subclass adds
only what it lacks:

- ``set_timesteps(..., num_tokens=N)`` computes ``mu`` from the number of latent tokens, linearly
  between ``(base_image_seq_len, base_shift)`` and ``(max_image_seq_len, max_shift)`` as LTX-Video
  does, and defaults to LTX's base grid ``linspace(1, 1/S, S)``;
- ``step(..., per_token_timesteps=t)`` moves every token from its own sigma to the next scheduled
  sigma below it, with the same sign convention as the scalar step (``x + (sigma_next - sigma) * v``),
  so tokens at ``t = 0`` (given frames) stay exactly as they are; with ``stochastic_sampling`` (diffusers'
  config flag) it takes the same stochastic step as the scalar one, and given tokens still stay as they are.

``stochastic_sampling=True`` (the embedded default model ships with it): each step predicts the clean
sample ``x0 = x - sigma * v`` and re-noises it to the next level with fresh noise, instead of moving along
``v``. Pass the pipeline's ``generator`` to ``step`` to keep it reproducible. On the default model it
raised text-to-video direction from 77 to 92 and count from 91 to 97 (seeds 1000 and 2000; docs/default-model.md,
"Sampling"). A deterministic trajectory commits to the blurred layouts of the first steps, and an object
can end up in two places that the clip alternates between; fresh noise at every level lets the model
re-decide from its own clean guess.

Forward process ``x_t = (1 - sigma) * x_0 + sigma * noise``; the model predicts ``v = noise - x_0``.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

# LTX-Video's sampling configuration (diffusers' LTX scheduler config).
LTX_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    shift=1.0,
    use_dynamic_shifting=True,
    base_shift=0.95,
    max_shift=2.05,
    base_image_seq_len=1024,
    max_image_seq_len=4096,
    shift_terminal=0.1,
)


class VidGenFlowMatchScheduler(FlowMatchEulerDiscreteScheduler):
    """``FlowMatchEulerDiscreteScheduler`` plus the token-count shift and per-token steps (see module doc).

    Build the LTX-Video configuration with ``VidGenFlowMatchScheduler(**LTX_SCHEDULER_CONFIG)``; any
    ``FlowMatchEulerDiscreteScheduler`` config loads with ``from_config``.
    """

    def shift_for_tokens(self, num_tokens: int) -> float:
        """LTX's ``mu``: linear in the token count through the two configured anchor points."""
        cfg = self.config
        slope = (cfg.max_shift - cfg.base_shift) / (cfg.max_image_seq_len - cfg.base_image_seq_len)
        return cfg.base_shift + slope * (num_tokens - cfg.base_image_seq_len)

    def training_sigmas(self, u: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """Noise levels for training, shifted as this schedule shifts sampling: uniform ``u`` in (0, 1)
        goes through the exponential shift of ``mu`` (dynamic shifting) or the fixed ``shift``."""
        if self.config.use_dynamic_shifting:
            return self.time_shift(self.shift_for_tokens(num_tokens), 1.0, u)
        shift = self.config.shift
        return shift * u / (1 + (shift - 1) * u)

    def few_step_sigmas(self, num_steps: int, num_tokens: int) -> torch.Tensor:
        """Noise levels of a few-step sampler (Self-Forcing's warped ``denoising_step_list``): the evenly
        spaced ``u = 1, 1 - 1/S, ..., 1/S`` sent through this schedule's shift for ``num_tokens``.
        With dynamic shifting, ``sigma = e^mu / (e^mu + 1/u - 1)``; with a fixed shift ``s``,
        ``sigma = s*u / (1 + (s - 1)*u)``. Returns ``(S,)``, descending from 1."""
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1; got {num_steps}")
        u = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)[:-1]
        return self.training_sigmas(u, num_tokens).float()

    def stretch_shift_to_terminal(self, t):
        """Stretch so the last sigma is ``shift_terminal``. A one-step schedule (sigma 1 only) has
        nothing to stretch; diffusers' version divides 0 by 0 there, so it is kept as it is."""
        if float(t[-1]) >= 1.0:
            return t
        return super().stretch_shift_to_terminal(t)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: list[float] | None = None,
        mu: float | None = None,
        timesteps: list[float] | None = None,
        num_tokens: int | None = None,
    ):
        """As diffusers' ``set_timesteps``; ``num_tokens`` gives ``mu`` when dynamic shifting is on."""
        if sigmas is None and timesteps is None:
            if num_inference_steps is None or num_inference_steps < 1:
                raise ValueError(f"num_inference_steps must be >= 1; got {num_inference_steps}")
            sigmas = np.linspace(1.0, 1.0 / num_inference_steps, num_inference_steps)
        if mu is None and self.config.use_dynamic_shifting:
            if num_tokens is None:
                raise ValueError("num_tokens (or mu) is required when use_dynamic_shifting is enabled")
            mu = self.shift_for_tokens(num_tokens)
        super().set_timesteps(num_inference_steps, device=device, sigmas=sigmas, mu=mu, timesteps=timesteps)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        per_token_timesteps: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        **kwargs,
    ) -> FlowMatchEulerDiscreteSchedulerOutput | tuple:
        """One step: Euler, or with ``stochastic_sampling`` the clean prediction re-noised with fresh noise
        drawn from ``generator``. With ``per_token_timesteps`` ``(B, N)`` (``sample``: ``(B, N, C)``), each
        token goes from ``sigma_i = t_i / num_train_timesteps`` to the largest scheduled sigma below it (0
        past the end); a token at ``t = 0`` is returned unchanged."""
        if per_token_timesteps is None:
            return super().step(
                model_output, timestep, sample, generator=generator, return_dict=return_dict, **kwargs
            )
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma = per_token_timesteps.to(torch.float32) / self.config.num_train_timesteps  # (B, N)
        schedule = self.sigmas.to(sigma.device)[:, None, None]  # (S+1, 1, 1), descending, ends at 0
        sigma_next = torch.where(schedule < sigma[None] - 1e-6, schedule, 0.0).amax(dim=0)  # (B, N)
        x, v = sample.to(torch.float32), model_output.to(torch.float32)
        if self.config.stochastic_sampling:
            x0 = x - sigma[..., None] * v  # a token at sigma 0 is its own x0, and its sigma_next is 0
            noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            prev = (1 - sigma_next)[..., None] * x0 + sigma_next[..., None] * noise
        else:
            prev = x + (sigma_next - sigma)[..., None] * v
        prev = prev.to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return (prev,)
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev)
