import numpy as np
import pytest
import torch

from vidgen import VidGenMaskedVideoPipeline, VidGenPipeline
from vidgen.data.shapes import sample_clip
from vidgen.schedulers import VidGenFlowMatchScheduler
from vidgen.testing import tiny_components


@pytest.fixture(scope="module")
def pipe():
    pipe = VidGenMaskedVideoPipeline.from_pipe(VidGenPipeline(**tiny_components()))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def clip():
    return sample_clip(3, height=32, width=32)  # 17 frames


def _run(pipe, clip, **kwargs):
    return pipe(video=clip.frames, prompt=clip.caption, num_inference_steps=2, output_type="np",
                generator=torch.Generator().manual_seed(0), **kwargs).frames[0]  # fmt: skip


@pytest.mark.parametrize(
    "kwargs,given_frames",
    [
        (dict(task="predict", given_frames=5), range(0, 5)),  # latent frames 0, 1
        (dict(task="backward_predict", given_frames=4), range(13, 17)),  # latent frame 4
        (dict(task="interpolate", every=4), [0, 4, 8, 12, 16]),  # latent 0 + pixel guidance in 1..4
        (dict(task="interpolate", every=8), [0, 8, 16]),
        (dict(task="animate"), [0]),
    ],
)
def test_given_frames_come_back_unchanged(pipe, clip, kwargs, given_frames):
    out = _run(pipe, clip, **kwargs)
    assert out.shape == (17, 32, 32, 3)
    given = list(given_frames)
    generated = [f for f in range(17) if f not in given]
    np.testing.assert_allclose(out[given] * 255, clip.frames[given], atol=1e-3)
    assert np.abs(out[generated] * 255 - clip.frames[generated]).max() > 10  # the rest is generated


@pytest.mark.parametrize("stochastic", [False, True])
def test_given_latent_tokens_stay_exact(pipe, clip, stochastic):
    scheduler = VidGenFlowMatchScheduler.from_config(pipe.scheduler.config, stochastic_sampling=stochastic)
    pipe = VidGenMaskedVideoPipeline.from_pipe(pipe, scheduler=scheduler)  # fresh noise at every step
    pipe.set_progress_bar_config(disable=True)
    out = pipe(video=clip.frames, prompt=clip.caption, task="predict", given_frames=5, num_inference_steps=2,
               output_type="latent", generator=torch.Generator().manual_seed(0)).frames  # fmt: skip
    pixels = pipe.video_to_pixels(clip.frames, 32, 32)
    encoded = pipe.normalize_latents(pipe.vae.encode(pixels).latent_dist.mode())
    grid = pipe.latent_grid(17, 32, 32)
    assert torch.equal(pipe.unpack_latents(out, grid)[:, :, :2], encoded[:, :, :2])


def test_every_nth_frame_is_given_as_pixels_and_latent_frames_only_when_whole(pipe):
    mask, given = pipe.task_mask("interpolate", (5, 8, 8), 17, None, 4)
    assert given.nonzero()[:, 0].tolist() == [0, 4, 8, 12, 16]
    assert mask[:, 0, 0].tolist() == [0, 1, 1, 1, 1]  # only latent frame 0 (pixel frame 0 alone) is whole
    mask, given = pipe.task_mask("predict", (5, 8, 8), 17, 5, None)
    assert mask[:, 0, 0].tolist() == [0, 0, 1, 1, 1] and given.sum() == 5


def test_pixel_guidance_moves_the_predicted_clean_video_onto_the_given_frames(pipe, clip):
    grid = pipe.latent_grid(17, 32, 32)
    pixels = pipe.video_to_pixels(clip.frames, 32, 32)
    g = torch.Generator().manual_seed(1)
    latents, v = (torch.randn(1, 5 * 8 * 8, pipe.vae.config.latent_channels, generator=g) for _ in range(2))
    token_t = torch.full((1, 5 * 8 * 8), 600.0)
    token_t[:, :64] = 0  # latent frame 0 given
    frames = torch.zeros(17, dtype=torch.bool)
    frames[::4] = True
    v_new = pipe.pixel_guidance(latents, v, token_t, grid, pixels, frames)
    sigma = (token_t / 1000)[..., None]
    x0 = latents - sigma * v
    z = pipe.denormalize_latents(pipe.unpack_latents(x0, grid))
    video = pipe.vae.decode(z, torch.zeros(1), return_dict=False)[0]
    video[:, :, frames] = pixels[:, :, frames]
    target = pipe.pack_latents(pipe.normalize_latents(pipe.vae.encode(video).latent_dist.mode()))
    torch.testing.assert_close((latents - sigma * v_new)[:, 64:], target[:, 64:], atol=1e-4, rtol=1e-4)
    assert torch.equal(v_new[:, :64], v[:, :64])  # given tokens (t = 0) untouched


@pytest.mark.parametrize("min_sigma", [0.0, 0.5, 1.0])
def test_pixel_guidance_steers_only_down_to_its_noise_level(pipe, clip, monkeypatch, min_sigma):
    steered = []
    guidance = type(pipe).pixel_guidance

    def spy(self, latents, v, token_t, *args):
        steered.append(float(token_t.max()) / 1000)
        return guidance(self, latents, v, token_t, *args)

    monkeypatch.setattr(type(pipe), "pixel_guidance", spy)
    _run(pipe, clip, task="interpolate", every=4, pixel_guidance_min_sigma=min_sigma)
    sigmas = [float(t) / 1000 for t in pipe.scheduler.timesteps]  # the 2 steps' noise levels
    assert steered == [s for s in sigmas if s >= min_sigma]


def test_explicit_completion_mask(pipe, clip):
    mask = torch.zeros(5, 8, 8)
    mask[:, 2:6, 2:6] = 1  # generate a square hole in every frame
    out = _run(pipe, clip, task="complete", mask=mask)
    keep = pipe.pixel_mask(mask, 17).numpy() == 0  # (F, H, W)
    np.testing.assert_allclose(out[keep] * 255, clip.frames[keep], atol=1e-3)


def test_bad_inputs(pipe, clip):
    with pytest.raises(ValueError, match="task must be one of"):
        _run(pipe, clip, task="teleport")
    with pytest.raises(ValueError, match="needs an explicit mask"):
        _run(pipe, clip, task="complete")
    with pytest.raises(ValueError, match="mask must have the latent grid's shape"):
        _run(pipe, clip, task="complete", mask=torch.ones(3, 3, 3))
    with pytest.raises(ValueError, match="given_frames must be in"):
        _run(pipe, clip, task="predict", given_frames=17)
    with pytest.raises(ValueError, match="covers no whole latent frame"):
        _run(pipe, clip, task="backward_predict", given_frames=3)
    with pytest.raises(ValueError, match="every must be in"):
        _run(pipe, clip, task="interpolate", every=1)
    with pytest.raises(ValueError, match="pixel_guidance_min_sigma must be in"):
        _run(pipe, clip, task="interpolate", pixel_guidance_min_sigma=1.5)
    with pytest.raises(ValueError, match="video is required"):
        pipe(prompt="a", task="predict")
