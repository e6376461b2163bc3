import numpy as np
import pytest
import torch

from vidgen import VidGenMaskedVideoPipeline, VidGenPipeline
from vidgen.data.shapes import sample_clip
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
        (dict(task="interpolate", every=2), [0, 5, 6, 7, 8, 13, 14, 15, 16]),  # latent 0, 2, 4
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


def test_given_latent_tokens_stay_exact(pipe, clip):
    out = pipe(video=clip.frames, prompt=clip.caption, task="predict", given_frames=5, num_inference_steps=2,
               output_type="latent", generator=torch.Generator().manual_seed(0)).frames  # fmt: skip
    pixels = pipe.video_to_pixels(clip.frames, 32, 32)
    encoded = pipe.normalize_latents(pipe.vae.encode(pixels).latent_dist.mode())
    grid = pipe.latent_grid(17, 32, 32)
    assert torch.equal(pipe.unpack_latents(out, grid)[:, :, :2], encoded[:, :, :2])


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
    with pytest.raises(ValueError, match="video is required"):
        pipe(prompt="a", task="predict")
