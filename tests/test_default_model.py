"""The embedded default model ships inside the package and generates a real video without downloads."""

import os

import numpy as np
import torch

import vidgen
from vidgen import (
    CAUSAL_SUBFOLDER,
    CAUSAL_TEXT_ENCODER_SUBFOLDER,
    HIERARCHICAL_SUBFOLDER,
    STREAMING_VAE_SUBFOLDER,
    TURBO2K_SUBFOLDER,
    TURBO2K_VAE_SUBFOLDER,
    HierarchicalAdapter,
    VidGenAutoregressivePipeline,
    VidGenHierarchicalPipeline,
    VidGenImageToVideoPipeline,
    VidGenPipeline,
)
from vidgen import eval as ev
from vidgen.data import shapes


def _pipe():
    pipe = VidGenPipeline.from_pretrained(vidgen.DEFAULT_MODEL)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# Each part of the embedded folder has its own budget: the bidirectional pipeline,
# the causal student with its streaming decoder, and the Turbo2K parts.
_EXTRA_PARTS = {
    "causal": ({CAUSAL_SUBFOLDER, CAUSAL_TEXT_ENCODER_SUBFOLDER, STREAMING_VAE_SUBFOLDER}, 15),
    "turbo2k": ({HIERARCHICAL_SUBFOLDER, TURBO2K_SUBFOLDER, TURBO2K_VAE_SUBFOLDER}, 15),
}


def _part_sizes():
    sizes = {"pipeline": 0, **{name: 0 for name in _EXTRA_PARTS}}
    for d, _, fs in os.walk(vidgen.DEFAULT_MODEL):
        top = os.path.relpath(d, vidgen.DEFAULT_MODEL).split(os.sep)[0]
        part = next((name for name, (folders, _) in _EXTRA_PARTS.items() if top in folders), "pipeline")
        sizes[part] += sum(os.path.getsize(os.path.join(d, f)) for f in fs)
    return sizes


def test_default_model_is_small_and_safetensors_only():
    files = [os.path.join(d, f) for d, _, fs in os.walk(vidgen.DEFAULT_MODEL) for f in fs]
    assert any(f.endswith("model_index.json") for f in files)
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))]
    sizes = _part_sizes()
    assert sizes["pipeline"] <= 25 * 2**20, sizes
    for name, (_, budget_mb) in _EXTRA_PARTS.items():
        assert sizes[name] <= budget_mb * 2**20, sizes


def test_default_model_generates_objects_reproducibly():
    pipe = _pipe()
    assert pipe.scheduler.config.stochastic_sampling  # the sampler its README numbers were measured with

    def run(seed):
        return pipe("a red square moves right", num_inference_steps=8, output_type="np",
                    generator=torch.Generator().manual_seed(seed)).frames[0]  # fmt: skip

    video = run(0)
    assert video.shape == (17, 64, 64, 3)  # the model's own size: 17 frames of 64x64
    frames = (video * 255).round().astype(np.uint8)
    assert all(ev.detect(f) for f in frames)  # objects on black in every frame, not noise or blank
    assert (frames.max(-1) < 40).mean() > 0.5
    np.testing.assert_array_equal(run(0), video)


def test_default_model_image_to_video_keeps_the_first_frame():
    pipe = VidGenImageToVideoPipeline.from_pipe(_pipe())
    clip = shapes.sample_clip(shapes.EVAL_SEED_OFFSET + 1)
    video = pipe(image=clip.frames[0], prompt=clip.caption, num_inference_steps=8, output_type="np",
                 generator=torch.Generator().manual_seed(0)).frames[0]  # fmt: skip
    first = (video[0] * 255).round().astype(np.uint8)
    assert ev.psnr(first, clip.frames[0]) > 20
    assert {d.color for d in ev.detect(first)} == {o.color for o in clip.objects}


def test_default_model_rolls_out_past_its_horizon_with_the_shipped_causal_student():
    parts = vidgen.causal_components(vidgen.DEFAULT_MODEL)
    causal, vae = parts["transformer"], parts["vae"]
    assert causal.config.causal_chunk_size and causal.dtype == vae.dtype == torch.float32  # stored as fp16
    pipe = VidGenAutoregressivePipeline.from_pretrained(vidgen.DEFAULT_MODEL, **parts)
    pipe.set_progress_bar_config(disable=True)
    caption = "a red circle moves right"
    video = pipe(caption, num_frames=81, output_type="np", generator=torch.Generator().manual_seed(0)).frames[0]
    assert video.shape == (81, 64, 64, 3)  # 21 latent frames: past the 5 of its training clips and its cache
    frames = (video * 255).round().astype(np.uint8)
    assert all(ev.detect(f) for f in frames)  # objects on black in every frame, not noise or blank
    for window in ev.score_windows(frames, caption):
        assert window["color"] == 100.0 and window["background"] < 20  # the prompt's object, no over-exposure


def test_default_model_ships_the_hierarchical_adapter_and_generates_above_its_size():
    adapter = HierarchicalAdapter.from_pretrained(vidgen.DEFAULT_MODEL, subfolder=HIERARCHICAL_SUBFOLDER)
    pipe = VidGenHierarchicalPipeline.from_pipe(_pipe(), hierarchical_adapter=adapter)
    caption = "a green square moves left"
    video = pipe(caption, height=128, width=128, num_inference_steps=10, high_res_inference_steps=4,
                 output_type="np", generator=torch.Generator().manual_seed(0)).frames[0]  # fmt: skip
    assert video.shape == (17, 128, 128, 3)
    small = torch.nn.functional.interpolate(torch.from_numpy(video).permute(0, 3, 1, 2), size=64, mode="area")
    frames = (small.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    assert all(ev.detect(f) for f in frames)  # objects on black, not noise or blank
    report = ev.read_video(frames, caption)
    assert report.count_ok and report.per_object("color") == [True]  # one object, the prompt's color


def test_default_model_ships_the_turbo2k_student_in_a_smaller_latent_space():
    parts = vidgen.turbo2k_components(vidgen.DEFAULT_MODEL)
    assert parts["transformer"].dtype == parts["vae"].dtype == torch.float32  # stored as fp16
    pipe = VidGenPipeline.from_pretrained(vidgen.DEFAULT_MODEL, **parts)
    pipe.set_progress_bar_config(disable=True)
    teacher = _pipe()
    student_tokens, teacher_tokens = (p.transformer.config.sample_size for p in (pipe, teacher))
    assert np.prod(teacher_tokens) >= 4 * np.prod(student_tokens)  # at least 4x fewer latent tokens
    assert pipe.resolve_guidance_scale(None) == 1.0  # the student samples without guidance
    caption = "a blue triangle moves up"
    video = pipe(caption, output_type="np", generator=torch.Generator().manual_seed(0)).frames[0]
    assert video.shape == (17, 64, 64, 3)  # the teacher's video size
    frames = (video * 255).round().astype(np.uint8)
    assert all(ev.detect(f) for f in frames)  # objects on black, not noise or blank
    report = ev.read_video(frames, caption)
    assert report.count_ok and report.per_object("color") == [True]
