"""The scheduler against its closed form: LTX's token-count shift, terminal stretch, Euler steps."""

import math

import numpy as np
import pytest
import torch
from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

from vidgen.schedulers import LTX_SCHEDULER_CONFIG, VidGenFlowMatchScheduler


def closed_form_sigmas(steps: int, num_tokens: int) -> np.ndarray:
    mu = 0.95 + (2.05 - 0.95) / (4096 - 1024) * (num_tokens - 1024)
    base = np.linspace(1.0, 1.0 / steps, steps)
    shifted = math.exp(mu) / (math.exp(mu) + (1 / base - 1))
    if steps == 1:  # a single step from sigma 1 straight to 0: nothing to stretch
        return np.array([1.0, 0.0])
    stretched = 1 - (1 - shifted) / ((1 - shifted[-1]) / (1 - 0.1))
    return np.append(stretched, 0.0)


@pytest.mark.parametrize("num_tokens", [192, 1024, 6144])
@pytest.mark.parametrize("steps", [1, 4, 30])
def test_schedule_matches_ltx_closed_form(num_tokens, steps):
    scheduler = VidGenFlowMatchScheduler(**LTX_SCHEDULER_CONFIG)
    scheduler.set_timesteps(steps, num_tokens=num_tokens)
    np.testing.assert_allclose(scheduler.sigmas.numpy(), closed_form_sigmas(steps, num_tokens), atol=1e-6)
    np.testing.assert_allclose(scheduler.timesteps.numpy(), scheduler.sigmas[:-1].numpy() * 1000, rtol=1e-6)
    assert torch.isfinite(scheduler.sigmas).all()
    if steps > 1:
        assert scheduler.sigmas[-2].item() == pytest.approx(0.1, abs=1e-6)  # terminal stretch
    # Same mu as diffusers' LTX pipelines compute.
    cfg = scheduler.config
    expected = calculate_shift(
        num_tokens, cfg.base_image_seq_len, cfg.max_image_seq_len, cfg.base_shift, cfg.max_shift
    )
    assert scheduler.shift_for_tokens(num_tokens) == pytest.approx(expected, abs=1e-9)


def test_each_euler_step_is_closed_form():
    scheduler = VidGenFlowMatchScheduler(**LTX_SCHEDULER_CONFIG)
    scheduler.set_timesteps(5, num_tokens=300)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 3, generator=g)
    for i, t in enumerate(scheduler.timesteps):
        v = torch.randn(2, 7, 3, generator=g)
        expected = x + (scheduler.sigmas[i + 1] - scheduler.sigmas[i]) * v
        x = scheduler.step(v, t, x, return_dict=False)[0]
        torch.testing.assert_close(x, expected, atol=1e-6, rtol=0)


def _four_step_scheduler_and_sample(seed: int, shape: tuple, **config):
    """A 4-step scheduler for 300 tokens, its sigmas, a sample ``x`` and a velocity ``v``, and step 1's ``t``."""
    scheduler = VidGenFlowMatchScheduler(**LTX_SCHEDULER_CONFIG, **config)
    scheduler.set_timesteps(4, num_tokens=300)
    g = torch.Generator().manual_seed(seed)
    x, v = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    return scheduler, scheduler.sigmas, x, v, scheduler.timesteps[1]


def test_per_token_step_keeps_clean_tokens_and_follows_closed_form():
    scheduler, sig, x, v, t = _four_step_scheduler_and_sample(1, (1, 4, 3))
    # Tokens: at the current level, given (t = 0), between levels 0 and 1, and at the top level.
    between = (sig[0] + sig[1]) / 2
    per_token = torch.stack([t, torch.tensor(0.0), between * 1000, sig[0] * 1000])[None]
    scheduler._step_index = 1
    out = scheduler.step(v, t, x, per_token_timesteps=per_token, return_dict=False)[0]
    assert torch.equal(out[0, 1], x[0, 1])  # t = 0 stays untouched, bit for bit
    torch.testing.assert_close(out[0, 0], x[0, 0] + (sig[2] - sig[1]) * v[0, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[0, 2], x[0, 2] + (sig[1] - between) * v[0, 2], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[0, 3], x[0, 3] + (sig[1] - sig[0]) * v[0, 3], atol=1e-6, rtol=0)
    # For tokens at the current level the per-token step equals the scalar step.
    scheduler._step_index = 1
    scalar = scheduler.step(v, t, x, return_dict=False)[0]
    torch.testing.assert_close(out[0, 0], scalar[0, 0], atol=1e-6, rtol=0)


def test_bad_arguments():
    scheduler = VidGenFlowMatchScheduler(**LTX_SCHEDULER_CONFIG)
    with pytest.raises(ValueError, match="num_inference_steps must be >= 1"):
        scheduler.set_timesteps(0, num_tokens=10)
    with pytest.raises(ValueError, match="num_tokens"):
        scheduler.set_timesteps(4)


def test_stochastic_steps_renoise_the_predicted_clean_sample_and_keep_given_tokens():
    scheduler, sig, x, v, t = _four_step_scheduler_and_sample(2, (1, 3, 5), stochastic_sampling=True)
    noise = torch.randn(1, 3, 5, generator=torch.Generator().manual_seed(7))
    # x0 = x - sigma * v, re-noised to the next level
    expected = (1 - sig[2]) * (x - sig[1] * v) + sig[2] * noise
    # Scalar step (diffusers' stochastic_sampling) and per-token step draw the same noise from the generator.
    scheduler._step_index = 1
    scalar = scheduler.step(v, t, x, generator=torch.Generator().manual_seed(7), return_dict=False)[0]
    torch.testing.assert_close(scalar, expected, atol=1e-6, rtol=0)
    per_token = torch.stack([t, torch.tensor(0.0), t])[None]  # the middle token is given (t = 0)
    scheduler._step_index = 1
    out = scheduler.step(
        v, t, x, per_token_timesteps=per_token, generator=torch.Generator().manual_seed(7), return_dict=False
    )[0]
    assert torch.equal(out[0, 1], x[0, 1])  # the given token stays, bit for bit
    torch.testing.assert_close(out[0, [0, 2]], expected[0, [0, 2]], atol=1e-6, rtol=0)
    euler = x[0, 0] + (sig[2] - sig[1]) * v[0, 0]
    assert not torch.allclose(out[0, 0], euler, atol=1e-3)  # not the Euler step
