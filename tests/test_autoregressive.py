import math
import re

import numpy as np
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from vidgen import VidGenAutoregressivePipeline, VidGenFlowMatchScheduler, VidGenPipeline
from vidgen.schedulers import LTX_SCHEDULER_CONFIG
from vidgen.testing import tiny_components

PROMPT = "a red circle moves right"


def causal_pipe(chunk: int = 1, independent_first_frame: bool = False) -> VidGenAutoregressivePipeline:
    components = tiny_components(causal_chunk_size=chunk, independent_first_frame=independent_first_frame)
    pipe = VidGenAutoregressivePipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_few_step_sigmas_match_their_closed_form():
    # Self-Forcing's warped [1000, 750, 500, 250] with a fixed shift of 5: [1, 0.9375, 0.8333, 0.625].
    fixed = VidGenFlowMatchScheduler(shift=5.0, use_dynamic_shifting=False)
    torch.testing.assert_close(
        fixed.few_step_sigmas(4, num_tokens=1), torch.tensor([1, 0.9375, 5 / 6, 0.625])
    )
    # LTX's token-count shift: sigma = e^mu / (e^mu + 1/u - 1), mu linear in the token count.
    ltx = VidGenFlowMatchScheduler(**LTX_SCHEDULER_CONFIG)
    mu = 0.95 + (2.05 - 0.95) * (320 - 1024) / (4096 - 1024)
    expected = [math.exp(mu) / (math.exp(mu) + 1 / u - 1) for u in (1, 2 / 3, 1 / 3)]
    torch.testing.assert_close(ltx.few_step_sigmas(3, num_tokens=320), torch.tensor(expected))
    with pytest.raises(ValueError, match="num_steps"):
        ltx.few_step_sigmas(0, num_tokens=320)


@torch.no_grad()
def reference_rollout(pipe, num_frames, steps, guidance, seed):
    """The rollout without a cache: every forward sees [all clean frames so far ; current chunk] in full,
    with the block-causal mask and clean frames at timestep 0. Returns latents ``(B, C, F, H, W)``."""
    g = torch.Generator().manual_seed(seed)
    grid = pipe.latent_grid(num_frames, 32, 32)
    F, H, W = grid
    bounds = pipe.transformer.chunk_starts(F)
    do_cfg = guidance > 1
    embeds, mask = pipe.encode_prompt_for_guidance(
        PROMPT, None, do_cfg, 1, None, None, None, None, None, "cpu"
    )
    noise = pipe.prepare_noise(1, grid, g, "cpu")
    clean = torch.zeros_like(noise)
    sigmas = pipe.scheduler.few_step_sigmas(
        steps, num_tokens=int(np.prod(pipe.transformer.config.sample_size))
    )
    for s, e in zip(bounds[:-1], bounds[1:]):
        chunk = e - s
        x = pipe.pack_latents(noise[:, :, s:e])
        for i, sigma in enumerate(sigmas.tolist()):
            tokens = torch.cat([pipe.pack_latents(clean[:, :, :s]), x], dim=1)  # (1, (s+chunk)*H*W, C)
            t = torch.tensor([[0.0] * s + [sigma * 1000] * chunk])  # (1, s+chunk) per frame
            if do_cfg:
                tokens, t = torch.cat([tokens, tokens]), torch.cat([t, t])
            v = pipe.transformer(tokens, embeds, t, mask, s + chunk, H, W).sample[:, s * H * W :]
            if do_cfg:
                v_u, v_c = v.chunk(2)
                v = v_u + guidance * (v_c - v_u)
            x0 = x - sigma * v
            if i + 1 < len(sigmas):
                eps = randn_tensor(x0.shape, generator=g, dtype=x0.dtype)
                x = (1 - sigmas[i + 1]) * x0 + sigmas[i + 1] * eps
        clean[:, :, s:e] = pipe.unpack_latents(x0, (chunk, H, W))
    return clean


@pytest.mark.parametrize(
    "chunk, first_alone, num_frames, guidance",
    [(1, False, 25, 1.0), (2, False, 21, 2.5), (2, True, 25, 1.0), (2, True, 21, 1.0)],
    ids=["chunk1", "chunk2-cfg", "chunk2-first-alone", "chunk2-first-alone-short-last"],
)
def test_rollout_equals_block_causal_full_forward(chunk, first_alone, num_frames, guidance):
    pipe = causal_pipe(chunk, first_alone)
    F = pipe.latent_grid(num_frames, 32, 32)[0]
    kwargs = dict(num_frames=num_frames, num_inference_steps=3, guidance_scale=guidance, output_type="latent")
    out = pipe(PROMPT, kv_cache_frames=F, generator=torch.Generator().manual_seed(0), **kwargs).frames
    reference = reference_rollout(pipe, num_frames, 3, guidance, seed=0)
    diff = (pipe.unpack_latents(out, reference.shape[2:]) - reference).abs().max().item()
    print(
        f"chunks {pipe.transformer.chunk_starts(F)}: rollout with KV cache vs block-causal full forward {diff:.2e}"
    )
    assert diff <= 1e-4
    # A window shorter than the video evicts, and the video changes from the first evicting chunk on.
    rolled = pipe(PROMPT, kv_cache_frames=chunk, generator=torch.Generator().manual_seed(0), **kwargs).frames
    n = pipe.transformer.chunk_starts(F)[2] * 64  # tokens of the first two chunks: nothing evicted yet
    torch.testing.assert_close(rolled[:, :n], out[:, :n], atol=1e-4, rtol=0)
    assert (rolled[:, n:] - out[:, n:]).abs().max() > 1e-3


def test_chunks_with_an_independent_first_frame():
    model = causal_pipe(2, independent_first_frame=True).transformer
    assert model.chunk_starts(6) == [0, 1, 3, 5, 6]  # [0] [1 2] [3 4] [5]
    assert model.chunk_of(torch.arange(6)).tolist() == [0, 1, 1, 2, 2, 3]
    plain = causal_pipe(2).transformer
    assert plain.chunk_starts(5) == [0, 2, 4, 5] and plain.chunk_of(torch.arange(5)).tolist() == [
        0,
        0,
        1,
        1,
        2,
    ]


def test_stream_yields_the_video_chunk_by_chunk_and_runs_past_the_window():
    pipe = causal_pipe()
    kwargs = dict(num_frames=41, generator=torch.Generator().manual_seed(0))
    chunks = list(pipe.stream(PROMPT, **kwargs))  # 11 latent frames, the cache keeps 2
    assert [c.shape[1] for c in chunks] == [1] + [4] * 10
    video = pipe(PROMPT, output_type="np", **{**kwargs, "generator": torch.Generator().manual_seed(0)}).frames
    assert video.shape == (1, 41, 32, 32, 3) and np.isfinite(video).all()
    np.testing.assert_array_equal(np.concatenate(chunks, axis=1), video)
    seen = []
    pipe(PROMPT, callback_on_chunk_end=lambda p, i, frames: seen.append((i, frames.shape[1])), **kwargs)
    assert seen == [(0, 1)] + [(i, 4) for i in range(1, 11)]


def test_extension_keeps_given_frames_and_continues_from_them():
    pipe = causal_pipe()
    given = np.random.default_rng(0).uniform(size=(9, 32, 32, 3)).astype(np.float32)
    out = pipe(
        PROMPT, video=given, num_frames=17, output_type="np", generator=torch.Generator().manual_seed(0)
    )
    video = out.frames[0]
    assert video.shape == (17, 32, 32, 3)
    np.testing.assert_allclose(video[:9], given, atol=1e-6)
    # The continuation depends on the given frames (they are in the cache).
    other = pipe(
        PROMPT,
        video=given[::-1].copy(),
        num_frames=17,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).frames[0]
    assert np.abs(other[9:] - video[9:]).max() > 1e-3


def test_bad_inputs_are_clear_errors():
    pipe = causal_pipe(chunk=2)
    with pytest.raises(ValueError, match="num_pinned_frames"):
        pipe(PROMPT, num_frames=21, kv_cache_frames=2, num_pinned_frames=2)
    with pytest.raises(ValueError, match="decode_context_frames"):
        pipe(PROMPT, num_frames=21, decode_context_frames=0)
    with pytest.raises(ValueError, match="end on a chunk boundary.*e.g. \\[5, 13, 21"):
        pipe(PROMPT, video=np.zeros((9, 32, 32, 3), np.float32), num_frames=21)
    with pytest.raises(ValueError, match="shorter than num_frames"):
        pipe(PROMPT, video=np.zeros((21, 32, 32, 3), np.float32), num_frames=21)
    bidirectional = VidGenAutoregressivePipeline.from_pipe(VidGenPipeline(**tiny_components()))
    with pytest.raises(ValueError, match="needs a causal"):
        bidirectional(PROMPT)
    with pytest.raises(ValueError, match="frame positions must lie"):
        pipe.transformer(
            torch.zeros(1, 64, 8), torch.zeros(1, 4, 16), torch.zeros(1), None, 1, 8, 8, frame_offset=2**16
        )


def test_cli_autoregressive_writes_a_long_video_with_the_causal_subfolder(tmp_path):
    import subprocess
    import sys

    from vidgen import CAUSAL_SUBFOLDER, load_video

    model = tmp_path / "model"
    components = tiny_components()
    VidGenPipeline(**components).save_pretrained(model)  # the bidirectional pipeline ...
    tiny_components(causal_chunk_size=1)["transformer"].save_pretrained(
        model / CAUSAL_SUBFOLDER
    )  # ... + student
    out = tmp_path / "long.mp4"
    cli = [sys.executable, "-m", "vidgen.cli", "t2v", "--model", str(model), "--prompt", PROMPT]
    result = subprocess.run(
        [*cli, "--autoregressive", "--frames", "45", "--kv-cache-frames", "3", "--output", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(load_video(out)) == 45
    result = subprocess.run(
        [*cli, "--kv-cache-frames", "3", "--output", str(tmp_path / "x.mp4")], capture_output=True, text=True
    )
    assert result.returncode == 2 and "--kv-cache-frames applies with --autoregressive only" in result.stderr
    bidirectional = tmp_path / "bidirectional"
    VidGenPipeline(**components).save_pretrained(bidirectional)
    cli[cli.index(str(model))] = str(bidirectional)
    result = subprocess.run(
        [*cli, "--autoregressive", "--output", str(tmp_path / "y.mp4")], capture_output=True, text=True
    )
    assert result.returncode == 2 and "has no causal transformer for --autoregressive" in result.stderr


def test_cli_opening_frames_come_from_the_bidirectional_model_and_the_student_extends_them(tmp_path):
    import subprocess
    import sys

    import imageio.v3 as iio

    from vidgen import CAUSAL_SUBFOLDER

    model = tmp_path / "model"
    VidGenPipeline(**tiny_components()).save_pretrained(model)
    tiny_components(causal_chunk_size=1)["transformer"].save_pretrained(model / CAUSAL_SUBFOLDER)
    out = tmp_path / "frames"  # a folder of PNGs: lossless, so the opening can be compared
    cli = [sys.executable, "-m", "vidgen.cli", "t2v", "--model", str(model), "--prompt", PROMPT, "--seed", "3"]
    result = subprocess.run(
        [*cli, "--autoregressive", "--frames", "21", "--opening-frames", "5", "--output", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    frames = np.stack([iio.imread(f) for f in sorted(out.glob("*.png"))]).astype(np.float32) / 255  # (21, H, W, 3)
    assert len(frames) == 21
    bidirectional = VidGenPipeline.from_pretrained(model)
    first = bidirectional(PROMPT, generator=torch.Generator().manual_seed(3), output_type="np").frames[0]
    assert np.abs(frames[:5] - first[:5]).max() <= 1 / 255 + 1e-6  # the teacher's frames, kept as given
    assert np.abs(frames[5:9] - first[5:9]).max() > 2 / 255  # then the student's own, not the teacher's
    for flags, message in (
        (["--autoregressive", "--opening-frames", "4"], "--opening-frames must be k \\* 4 \\+ 1 frames"),
        (["--opening-frames", "5"], "--opening-frames applies with --autoregressive only"),
    ):
        result = subprocess.run([*cli, *flags, "--output", str(tmp_path / "x.mp4")], capture_output=True, text=True)
        assert result.returncode == 2 and re.search(message, result.stderr), result.stderr


def test_causal_components_pair_the_student_with_the_text_encoder_it_was_distilled_with(tmp_path):
    from vidgen import CAUSAL_SUBFOLDER, CAUSAL_TEXT_ENCODER_SUBFOLDER, causal_components
    from vidgen.testing import tiny_t5

    components = tiny_components()
    VidGenPipeline(**components).save_pretrained(tmp_path)
    assert causal_components(tmp_path) == {}  # a bidirectional folder has no rollout parts
    tiny_components(causal_chunk_size=1)["transformer"].save_pretrained(tmp_path / CAUSAL_SUBFOLDER)
    parts = causal_components(tmp_path)
    assert set(parts) == {"transformer"}  # no text encoder of its own: the folder's is used
    student_text = tiny_t5(len(components["tokenizer"]), seed=5)
    student_text.save_pretrained(tmp_path / CAUSAL_TEXT_ENCODER_SUBFOLDER)
    parts = causal_components(tmp_path)
    assert set(parts) == {"transformer", "text_encoder"} and parts["transformer"].config.causal_chunk_size == 1
    pipe = VidGenAutoregressivePipeline.from_pretrained(tmp_path, **parts)
    ids = torch.arange(2, 8)[None]
    with torch.no_grad():
        assert torch.equal(pipe.text_encoder(ids)[0], student_text(ids)[0])
        assert not torch.equal(pipe.text_encoder(ids)[0], components["text_encoder"](ids)[0])
