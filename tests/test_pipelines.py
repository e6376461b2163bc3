import numpy as np
import PIL.Image
import pytest
import torch

from vidgen import VidGenImageToVideoPipeline, VidGenPipeline
from vidgen.testing import tiny_components

PROMPT = "a red circle moves right"
FAST = dict(height=32, width=32, num_frames=9, num_inference_steps=2)


@pytest.fixture(scope="module", params=["full", "factorized"])
def pipe(request):
    pipe = VidGenPipeline(**tiny_components(request.param))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_output_types_and_shapes(pipe):
    np_out = pipe(PROMPT, generator=_gen(), output_type="np", **FAST).frames
    assert np_out.shape == (1, 9, 32, 32, 3) and np_out.min() >= 0 and np_out.max() <= 1
    pt_out = pipe(PROMPT, generator=_gen(), output_type="pt", **FAST).frames
    assert pt_out.shape == (1, 9, 3, 32, 32)
    np.testing.assert_allclose(pt_out.permute(0, 1, 3, 4, 2).numpy(), np_out, atol=1e-6)
    pil_out = pipe(PROMPT, generator=_gen(), output_type="pil", **FAST).frames
    assert len(pil_out) == 1 and len(pil_out[0]) == 9 and pil_out[0][0].size == (32, 32)
    latent = pipe(PROMPT, generator=_gen(), output_type="latent", **FAST).frames
    assert latent.shape == (1, 3 * 8 * 8, 8)  # (B, N, C): 3 latent frames of 8x8 tokens
    (video,) = pipe(PROMPT, generator=_gen(), output_type="np", return_dict=False, **FAST)
    np.testing.assert_array_equal(video, np_out)


def test_default_size_comes_from_the_model(pipe):
    out = pipe(PROMPT, generator=_gen(), output_type="latent", num_inference_steps=1).frames
    F, H, W = pipe.transformer.config.sample_size
    assert out.shape == (1, F * H * W, 8)


def test_same_seed_same_video_other_seed_other_video(pipe):
    a = pipe(PROMPT, generator=_gen(3), output_type="np", **FAST).frames
    b = pipe(PROMPT, generator=_gen(3), output_type="np", **FAST).frames
    c = pipe(PROMPT, generator=_gen(4), output_type="np", **FAST).frames
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_batches_prompts_and_videos_per_prompt(pipe):
    out = pipe(
        [PROMPT, "a blue square stays still"],
        num_videos_per_prompt=2,
        generator=_gen(),
        output_type="np",
        **FAST,
    )
    assert out.frames.shape == (4, 9, 32, 32, 3)


def test_prompt_embeds_path_equals_prompt_path(pipe):
    embeds, mask, neg, neg_mask = pipe.encode_prompt(PROMPT, max_sequence_length=16)
    ref = pipe(PROMPT, generator=_gen(), output_type="np", max_sequence_length=16, **FAST).frames
    out = pipe(
        prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt_embeds=neg,
        negative_prompt_attention_mask=neg_mask, generator=_gen(), output_type="np", **FAST,
    ).frames  # fmt: skip
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_guidance_changes_the_result(pipe):
    guided = pipe(PROMPT, guidance_scale=5.0, generator=_gen(), output_type="latent", **FAST).frames
    plain = pipe(PROMPT, guidance_scale=1.0, generator=_gen(), output_type="latent", **FAST).frames
    assert (guided - plain).abs().max() > 1e-4


def test_callback_sees_every_step_and_can_interrupt(pipe):
    seen = []

    def callback(p, step, t, tensors):
        seen.append((step, tuple(tensors["latents"].shape)))
        if step == 1:
            p._interrupt = True
        return {}

    pipe(
        PROMPT,
        generator=_gen(),
        output_type="latent",
        callback_on_step_end=callback,
        **{**FAST, "num_inference_steps": 5},
    )
    assert seen == [(0, (1, 192, 8)), (1, (1, 192, 8))]


def test_save_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    assert list(tmp_path.glob("transformer/*.safetensors")) and list(tmp_path.glob("vae/*.safetensors"))
    loaded = VidGenPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    a = pipe(PROMPT, generator=_gen(), output_type="np", **FAST).frames
    b = loaded(PROMPT, generator=_gen(), output_type="np", **FAST).frames
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert type(loaded.transformer) is type(pipe.transformer)


def test_folder_default_guidance_is_saved_reloaded_carried_and_used(tmp_path):
    pipe = VidGenPipeline(**tiny_components(), default_guidance_scale=1.0)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path)
    loaded = VidGenPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    i2v = VidGenImageToVideoPipeline.from_pipe(loaded)
    assert loaded.resolve_guidance_scale(None) == i2v.resolve_guidance_scale(None) == 1.0
    assert loaded.resolve_guidance_scale(3.0) == 3.0  # an explicit scale wins
    default = loaded(PROMPT, generator=_gen(), output_type="latent", **FAST).frames
    off = loaded(PROMPT, guidance_scale=1.0, generator=_gen(), output_type="latent", **FAST).frames
    guided = loaded(PROMPT, guidance_scale=2.0, generator=_gen(), output_type="latent", **FAST).frames
    torch.testing.assert_close(default, off)
    assert (default - guided).abs().max() > 1e-4
    # A folder that does not say samples at the library default.
    assert VidGenPipeline(**tiny_components()).resolve_guidance_scale(None) == 2.0
    with pytest.raises(ValueError, match="default_guidance_scale must be >= 0 or None; got -1"):
        VidGenPipeline(**tiny_components(), default_guidance_scale=-1)


BAD_INPUTS = [
    (dict(height=30), "height must be a positive multiple of 4"),
    (dict(width=0), "width must be a positive multiple of 4"),
    (dict(num_frames=10), r"num_frames must be of the form k\*4 \+ 1 .*got 10, try 9"),
    (dict(num_inference_steps=0), "num_inference_steps must be an integer >= 1"),
    (dict(guidance_scale=-1.0), "guidance_scale must be >= 0"),
    (dict(guidance_rescale=2.0), r"guidance_rescale must be in \[0, 1\]"),
    (dict(output_type="gif"), "output_type must be one of"),
    (dict(prompt=None), "exactly one of `prompt` and `prompt_embeds`; got neither"),
    (dict(prompt_embeds=torch.zeros(1, 4, 16), prompt_attention_mask=torch.ones(1, 4)), "got both"),
    (
        dict(prompt=["a", "b"], negative_prompt=["c"]),
        "negative_prompt has 1 entries but the prompt batch size is 2",
    ),
    (
        dict(generator=[torch.Generator(), torch.Generator()]),
        "generator list has 2 entries but the batch is 1",
    ),
    (dict(latents=torch.zeros(1, 5, 8)), r"latents must be packed \(B, N, C\)"),
    (dict(prompt=3), "prompt must be a string or a non-empty list of strings"),
]


@pytest.mark.parametrize("kwargs,message", BAD_INPUTS)
def test_bad_inputs_name_the_argument(pipe, kwargs, message):
    args = {"prompt": PROMPT, **FAST, **kwargs}
    with pytest.raises(ValueError, match=message):
        pipe(**args)


def test_image_to_video_keeps_the_first_frame(pipe):
    i2v = VidGenImageToVideoPipeline.from_pipe(pipe)
    assert i2v.transformer is pipe.transformer
    image = PIL.Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8))
    latents = i2v(image=image, prompt=PROMPT, generator=_gen(), output_type="latent", **FAST).frames
    # The first latent frame is exactly the encoded image (drawn with the same generator state).
    expected = i2v.encode_image([image], 32, 32, _gen(), "cpu", torch.float32)  # (1, C, 1, H, W)
    first = i2v.unpack_latents(latents, (3, 8, 8))[:, :, :1]
    assert torch.equal(first, expected)
    video = i2v(image=image, prompt=PROMPT, generator=_gen(), output_type="np", **FAST).frames
    assert video.shape == (1, 9, 32, 32, 3)
    # Size defaults to the image's.
    assert i2v(
        image=image, prompt=PROMPT, num_frames=9, num_inference_steps=1, output_type="np"
    ).frames.shape[2:4] == (32, 32)


def test_image_to_video_rejects_bad_images(pipe):
    i2v = VidGenImageToVideoPipeline.from_pipe(pipe)
    image = PIL.Image.new("RGB", (32, 32))
    with pytest.raises(ValueError, match="image must be 64x32"):
        i2v(image=image, prompt=PROMPT, **{**FAST, "height": 64})
    with pytest.raises(ValueError, match="image must be a PIL image, a numpy array or a torch tensor"):
        i2v(image="picture.png", prompt=PROMPT, **FAST)
    with pytest.raises(ValueError, match="image list has 2 entries"):
        i2v(image=[image, image], prompt=[PROMPT] * 3, **FAST)
    with pytest.raises(ValueError, match="image is required"):
        i2v(prompt=PROMPT, **FAST)


def test_timestep_conditioned_decoding_uses_ltx_defaults(pipe):
    assert pipe.vae.config.timestep_conditioning
    default = pipe(PROMPT, generator=_gen(), output_type="np", **FAST).frames
    explicit = pipe(
        PROMPT, generator=_gen(), output_type="np", decode_timestep=0.05, decode_noise_scale=0.025, **FAST
    ).frames
    other = pipe(
        PROMPT, generator=_gen(), output_type="np", decode_timestep=0.5, decode_noise_scale=0.5, **FAST
    ).frames
    np.testing.assert_array_equal(default, explicit)
    assert np.abs(other - default).max() > 1e-3


def test_vae_presets():
    from accelerate import init_empty_weights

    from vidgen import make_vae

    with init_empty_weights():  # the real LTX-Video VAE, without allocating its weights
        ltx = make_vae("ltx-video")
    assert (ltx.spatial_compression_ratio, ltx.temporal_compression_ratio, ltx.config.latent_channels) == (
        32,
        8,
        128,
    )
    assert 32 * 32 * 8 * 3 / 128 == 192 and ltx.config.timestep_conditioning
    small = make_vae("small")
    assert (small.spatial_compression_ratio, small.temporal_compression_ratio) == (8, 4)
    with pytest.raises(ValueError, match="VAE preset must be one of"):
        make_vae("huge")
