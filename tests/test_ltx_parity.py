"""A pipeline folder made of diffusers' own LTX-Video components runs through vidgen's pipelines and
gives the same video as diffusers' LTXPipeline / LTXImageToVideoPipeline (tiny random components)."""

import numpy as np
import pytest
import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    LTXImageToVideoPipeline,
    LTXPipeline,
    LTXVideoTransformer3DModel,
)

from vidgen import VidGenImageToVideoPipeline, VidGenPipeline, make_vae
from vidgen.schedulers import LTX_SCHEDULER_CONFIG
from vidgen.testing import randomize_, tiny_t5, word_tokenizer

SETTINGS = dict(
    height=32, width=32, num_frames=9, frame_rate=25, num_inference_steps=4, guidance_scale=3.0,
    decode_timestep=0.05, decode_noise_scale=0.025, output_type="np", max_sequence_length=16,
)  # fmt: skip


@pytest.fixture(scope="module")
def ltx_folder(tmp_path_factory):
    torch.manual_seed(0)
    tokenizer = word_tokenizer()
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2,
        attention_head_dim=8, cross_attention_dim=16, num_layers=2, caption_channels=16,
    )  # fmt: skip
    randomize_(transformer, seed=1, std=0.1)
    pipe = LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**LTX_SCHEDULER_CONFIG),
        vae=make_vae("tiny-timestep").eval(),
        text_encoder=tiny_t5(len(tokenizer)),
        tokenizer=tokenizer,
        transformer=transformer.eval(),
    )
    path = tmp_path_factory.mktemp("ltx") / "pipe"
    pipe.save_pretrained(path)
    return path


def _run(pipe, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    return pipe(generator=torch.Generator().manual_seed(42), **SETTINGS, **kwargs).frames


def test_text_to_video_matches_ltx_pipeline(ltx_folder):
    prompt = dict(prompt="a red circle moves right", negative_prompt="blue")
    reference = _run(LTXPipeline.from_pretrained(ltx_folder), **prompt)
    ours = _run(VidGenPipeline.from_pretrained(ltx_folder), **prompt)
    assert ours.shape == reference.shape == (1, 9, 32, 32, 3)
    diff = np.abs(ours - reference).max()
    print(f"t2v parity max abs diff: {diff:.3e}")
    assert diff <= 1e-4
    assert reference.std() > 1e-3  # a real video, not a constant


def test_image_to_video_matches_ltx_pipeline(ltx_folder):
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    from PIL import Image

    args = dict(image=Image.fromarray(image), prompt="a green square moves up")
    reference = _run(LTXImageToVideoPipeline.from_pretrained(ltx_folder), **args)
    ours = _run(VidGenImageToVideoPipeline.from_pretrained(ltx_folder), **args)
    diff = np.abs(ours - reference).max()
    print(f"i2v parity max abs diff: {diff:.3e}")
    assert diff <= 1e-4


def test_ltx_folder_switches_pipelines_with_from_pipe(ltx_folder):
    t2v = VidGenPipeline.from_pretrained(ltx_folder)
    i2v = VidGenImageToVideoPipeline.from_pipe(t2v)
    assert i2v.transformer is t2v.transformer and i2v.vae is t2v.vae


def test_lora_trained_on_an_ltx_folder_loads_in_diffusers_ltx_pipeline(ltx_folder, tmp_path):
    from vidgen.testing import write_shapes_clips
    from vidgen.training.train_lora import main as train_lora

    data = tmp_path / "data"
    data.mkdir()
    write_shapes_clips(data, 4, fps=25)
    train_lora([
        "--pretrained_model", str(ltx_folder), "--output_dir", str(tmp_path / "lora"), "--data.path", str(data),
        "--data.buckets", "[9x32x32]", "--data.fps", "25", "--train.max_steps", "4", "--train.batch_size", "2",
        "--train.learning_rate", "1e-2", "--lora.rank", "4", "--train.first_frame_p", "0.5",
        "--logging.report_to", "none",
    ])  # fmt: skip
    prompt = dict(prompt="a red circle moves right", negative_prompt="blue")
    base = _run(LTXPipeline.from_pretrained(ltx_folder), **prompt)
    reference, ours = LTXPipeline.from_pretrained(ltx_folder), VidGenPipeline.from_pretrained(ltx_folder)
    for pipe in (reference, ours):
        pipe.load_lora_weights(tmp_path / "lora")
    reference, ours = _run(reference, **prompt), _run(ours, **prompt)
    assert np.abs(reference - base).max() > 1e-3  # the LoRA changes diffusers' own LTX pipeline
    assert np.abs(ours - reference).max() <= 1e-4  # and ours the same way
