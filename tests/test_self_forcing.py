"""The causal-student training pieces (rollout, DMD, critic) and the three recipes, on tiny models."""

import sys

import numpy as np
import pytest
import torch

from vidgen import VidGenAutoregressivePipeline, VidGenPipeline, VidGenTransformer3DModel
from vidgen.testing import tiny_components, tiny_transformer
from vidgen.training.checkpoint import average_models
from vidgen.training.self_forcing import (
    causal_student,
    critic_loss,
    dmd_loss,
    encode_text,
    guided_x0,
    rollout,
    teacher_trajectory,
    training_captions,
)

PROMPT = "a red circle moves right"


@pytest.fixture(scope="module")
def teacher_pipe():
    pipe = VidGenPipeline(**tiny_components())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_training_rollout_is_the_inference_rollout(teacher_pipe):
    student = causal_student(teacher_pipe.transformer, chunk_size=1)
    pipe = VidGenAutoregressivePipeline.from_pipe(teacher_pipe, transformer=student)
    latents = pipe(
        PROMPT, num_frames=25, num_inference_steps=3, kv_cache_frames=2, output_type="latent",
        generator=torch.Generator().manual_seed(0),
    ).frames  # fmt: skip
    g = torch.Generator().manual_seed(0)
    grid = pipe.latent_grid(25, 32, 32)
    noise = pipe.prepare_noise(1, grid, g, "cpu")
    sigmas = pipe.scheduler.few_step_sigmas(3, int(np.prod(student.config.sample_size))).tolist()
    text = encode_text(pipe, [PROMPT], "cpu")
    with torch.no_grad():
        x, cache = rollout(student, noise, text, sigmas, [2] * grid[0], g, kv_cache_frames=2, grad=False)
    torch.testing.assert_close(pipe.pack_latents(x), latents, atol=1e-5, rtol=0)
    assert cache.frame_indices.tolist() == [5, 6]


def test_rollout_gradients_flow_through_one_step_per_chunk(teacher_pipe):
    student = causal_student(teacher_pipe.transformer, chunk_size=1).train()
    with_grad = []
    student.register_forward_hook(lambda m, i, o: with_grad.append(torch.is_grad_enabled()))
    noise = torch.randn(2, 8, 3, 8, 8)
    text = encode_text(teacher_pipe, [PROMPT] * 2, "cpu")
    x, _ = rollout(student, noise, text, [1.0, 0.7, 0.3], [2, 0, 1], torch.Generator().manual_seed(0))
    # Chunk k runs exit_steps[k] + 1 denoising passes and one context pass; only the exit pass has grad.
    assert len(with_grad) == (3 + 1) + (1 + 1) + (2 + 1)
    assert sum(with_grad) == 3
    x.square().mean().backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)


def test_backward_noise_initialisation_starts_from_own_frames(teacher_pipe):
    student = causal_student(teacher_pipe.transformer, chunk_size=1)
    text = encode_text(teacher_pipe, [PROMPT], "cpu")
    own = torch.randn(1, 8, 2, 8, 8)
    noise = torch.randn(1, 8, 2, 8, 8)
    with torch.no_grad():
        a, _ = rollout(student, noise, text, [1.0, 0.5], [1, 1], torch.Generator(), init=own)
        b, _ = rollout(student, noise, text, [1.0, 0.5], [1, 1], torch.Generator(), init=own * 2)
        c, _ = rollout(student, noise, text, [1.0, 0.5], [1, 1], torch.Generator())
    assert (a - b).abs().max() > 1e-3 and (a - c).abs().max() > 1e-3  # the own frames matter


def test_dmd_loss_vanishes_when_the_critic_is_the_teacher_and_points_along_fake_minus_real(teacher_pipe):
    teacher = teacher_pipe.transformer
    text = encode_text(teacher_pipe, [PROMPT] * 2, "cpu")
    uncond = encode_text(teacher_pipe, [""] * 2, "cpu")
    x = torch.randn(2, 8, 3, 8, 8, requires_grad=True)

    def sample_sigma(u):
        return u

    loss, _ = dmd_loss(x, teacher, teacher, text, uncond, 1.0, sample_sigma, torch.Generator().manual_seed(0))
    assert loss.item() < 1e-10
    critic = VidGenTransformer3DModel.from_config(teacher.config)  # zero output layer: another score
    loss, _ = dmd_loss(
        x, teacher, critic, text, uncond, 3.0, sample_sigma, torch.Generator().manual_seed(0), 1
    )
    loss.backward()
    assert loss.item() > 0
    assert x.grad[:, :, :1].abs().max() == 0  # the given frame carries no loss
    assert x.grad[:, :, 1:].abs().max() > 0
    loss_c = critic_loss(critic, x, text, sample_sigma, torch.Generator().manual_seed(0), given_frames=1)
    assert torch.isfinite(loss_c) and loss_c.item() > 0


def test_teacher_trajectory_starts_at_the_noise_and_ends_on_the_guided_prediction(teacher_pipe):
    teacher = teacher_pipe.transformer
    text = encode_text(teacher_pipe, [PROMPT], "cpu")
    uncond = encode_text(teacher_pipe, [""], "cpu")
    noise = torch.randn(1, 8, 3, 8, 8)
    states, clean = teacher_trajectory(teacher, noise, text, uncond, [1.0, 0.6], 2.0, 2)
    assert states.shape == (1, 2, 8, 3, 8, 8) and torch.isfinite(clean).all()
    torch.testing.assert_close(states[:, 0], noise)
    # One Euler step from sigma 1 to 0 lands exactly on the guided clean prediction.
    _, one = teacher_trajectory(teacher, noise, text, uncond, [1.0], 2.0, 1)
    expected = guided_x0(teacher, noise, torch.full((1, 3), 1000.0), text, uncond, 2.0)
    torch.testing.assert_close(one, expected, atol=1e-5, rtol=0)


def test_training_captions_take_the_worlds_mix_or_the_asked_two_object_share():
    def two_object_share(captions):
        return np.mean([" and " in c for c in captions])

    world = training_captions(np.random.default_rng(0), 2000)
    assert 0.45 < two_object_share(world) < 0.55  # one or two objects alike
    assert two_object_share(training_captions(np.random.default_rng(0), 200, 1.0)) == 1.0
    assert two_object_share(training_captions(np.random.default_rng(0), 200, 0.0)) == 0.0
    assert 0.75 < two_object_share(training_captions(np.random.default_rng(0), 2000, 0.8)) < 0.85
    with pytest.raises(ValueError, match="two_object_share must be in \\[0, 1\\]; got 1.5"):
        training_captions(np.random.default_rng(0), 4, 1.5)


def test_recipes_run_resume_and_export_a_student_the_pipeline_loads(
    load_script, teacher_pipe, tmp_path, monkeypatch
):
    teacher_dir = tmp_path / "teacher"
    teacher_pipe.save_pretrained(teacher_dir)
    monkeypatch.setattr(sys, "argv", ["x"])
    init = load_script("train_causal_init")
    init.main(["--out", str(tmp_path / "init"), "--teacher", str(teacher_dir), "--pairs", "64", "--substeps", "1", "--chunk-size", "2", "--independent-first-frame",
               "--steps", "3", "--batch", "2", "--checkpoint-every", "2"])  # fmt: skip
    student_dir = tmp_path / "init" / "transformer_causal"
    with pytest.raises(ValueError, match="other settings \\(chunk_size, independent_first_frame\\)"):
        init.main(["--out", str(tmp_path / "init"), "--teacher", str(teacher_dir), "--pairs", "64", "--substeps", "1",
                   "--steps", "3", "--batch", "2", "--checkpoint-every", "2"])  # fmt: skip
    config = VidGenTransformer3DModel.from_pretrained(student_dir).config
    assert (config.causal_chunk_size, config.independent_first_frame) == (2, True)

    common = ["--teacher", str(teacher_dir), "--batch", "2", "--critic-ratio", "1", "--checkpoint-every", "1"]
    sf = load_script("train_self_forcing")
    sf.main(["--out", str(tmp_path / "sf"), "--student", str(student_dir), "--steps", "2", *common])
    sf.main(
        ["--out", str(tmp_path / "sf"), "--student", str(student_dir), "--steps", "3", *common]
    )  # resumes
    rows = (tmp_path / "sf" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]  # step 2 ran once, after the resume

    pp = load_script("train_self_forcing_pp")
    pp.main(["--out", str(tmp_path / "pp"), "--student", str(tmp_path / "sf" / "transformer_causal"),
             "--steps", "2", "--rollout-frames", "6", "--two-object-share", "1",
             "--regression-pairs", str(tmp_path / "init" / "pairs"), *common])  # fmt: skip
    rows = [r.split(",") for r in (tmp_path / "pp" / "log.csv").read_text().splitlines()]
    regression = [float(r[rows[0].index("regression")]) for r in rows[1:]]
    assert len(regression) == 2 and all(0 < r < 10 for r in regression)  # the init's ODE regression, added
    causal = VidGenTransformer3DModel.from_pretrained(tmp_path / "pp" / "transformer_causal")
    pipe = VidGenAutoregressivePipeline.from_pipe(teacher_pipe, transformer=causal)
    video = pipe(PROMPT, num_frames=29, output_type="np", generator=torch.Generator().manual_seed(0)).frames
    assert video.shape == (1, 29, 32, 32, 3) and np.isfinite(video).all()


@pytest.mark.parametrize("recipe", ["train_self_forcing", "train_self_forcing_pp"])
def test_critic_warmup_moves_only_the_critic_before_the_student_starts(
    load_script, teacher_pipe, tmp_path, monkeypatch, recipe
):
    from safetensors.torch import load_file

    teacher_dir, student_dir, run = tmp_path / "teacher", tmp_path / "student", tmp_path / "run"
    teacher_pipe.save_pretrained(teacher_dir)
    causal_student(teacher_pipe.transformer, 2, True).save_pretrained(student_dir)
    monkeypatch.setattr(sys, "argv", ["x"])
    extra = ["--rollout-frames", "6"] if recipe == "train_self_forcing_pp" else []
    load_script(recipe).main(["--out", str(run), "--student", str(student_dir), "--teacher", str(teacher_dir),
                              "--batch", "2", "--critic-ratio", "1", "--critic-warmup", "2", "--steps", "1",
                              "--checkpoint-every", "1", *extra])  # fmt: skip

    start = VidGenTransformer3DModel.from_pretrained(student_dir).state_dict()
    critic0 = teacher_pipe.transformer.state_dict()

    def moved(step: int, prefix: str, reference: dict) -> bool:
        tensors = load_file(run / "checkpoints" / f"step_{step:06d}" / "weights.safetensors")
        return any(not torch.equal(tensors[f"{prefix}.{k}"], v) for k, v in reference.items())

    assert not moved(2, "student", start) and moved(2, "critic", critic0)  # warm-up: the critic only
    assert moved(3, "student", start)  # then the student's one update
    rows = [r.split(",") for r in (run / "log.csv").read_text().splitlines()]
    dmd = rows[0].index("dmd")
    assert [r[dmd] == "nan" for r in rows[1:]] == [True, True, False]


def test_streaming_decoder_recipe_keeps_the_encoder_and_shrinks_the_decoder(
    load_script, tmp_path, monkeypatch
):
    from vidgen import VidGenVideoAutoencoder

    source = VidGenVideoAutoencoder(block_out_channels=(8, 16, 16), latent_channels=8)
    pipe_dir = tmp_path / "pipe"
    source.save_pretrained(pipe_dir / "vae")
    monkeypatch.setattr(sys, "argv", ["x"])
    recipe = load_script("train_decoder")
    out = tmp_path / "stream"
    recipe.main(
        ["--out", str(out), "--model", str(pipe_dir), "--channels", "8,8,8", "--steps", "2", "--batch", "2"]
    )
    vae = VidGenVideoAutoencoder.from_pretrained(out / "vae")
    assert vae.config.decoder_block_out_channels == [8, 8, 8]
    for name, p in source.state_dict().items():
        if name.startswith("enc_"):
            torch.testing.assert_close(vae.state_dict()[name], p)  # the latent space is the same
    assert sum(p.numel() for p in vae.parameters()) < sum(p.numel() for p in source.parameters())
    video = vae.decode(torch.randn(1, 8, 2, 8, 8)).sample
    assert video.shape == (1, 3, 5, 64, 64) and torch.isfinite(video).all()


def test_decoder_recipe_fine_tunes_the_pipelines_own_decoder(load_script, tmp_path, monkeypatch):
    from vidgen import VidGenVideoAutoencoder

    torch.manual_seed(0)
    source = VidGenVideoAutoencoder(block_out_channels=(8, 16, 16), latent_channels=8)
    source.latents_mean.fill_(0.5)
    pipe_dir = tmp_path / "pipe"
    source.save_pretrained(pipe_dir / "vae")
    monkeypatch.setattr(sys, "argv", ["x"])
    recipe = load_script("train_decoder")
    args = ["--model", str(pipe_dir), "--init-decoder", "--frames", "9", "--batch", "2"]
    with pytest.raises(SystemExit):  # a window must be 4k + 1 frames
        recipe.main(["--out", str(tmp_path / "bad"), *args, "--frames", "8"])
    recipe.main(["--out", str(tmp_path / "same"), *args, "--steps", "0"])
    unchanged = VidGenVideoAutoencoder.from_pretrained(tmp_path / "same" / "vae").state_dict()
    for name, p in source.state_dict().items():
        torch.testing.assert_close(unchanged[name], p)  # it starts as the pipeline's whole VAE
    recipe.main(["--out", str(tmp_path / "ft"), *args, "--steps", "2", "--lr", "1e-2"])
    tuned = VidGenVideoAutoencoder.from_pretrained(tmp_path / "ft" / "vae")
    assert tuned.config.decoder_block_out_channels is None  # the pipeline's widths
    state = tuned.state_dict()
    for name, p in source.state_dict().items():
        if name.startswith("enc_") or name.startswith("latents_"):
            torch.testing.assert_close(state[name], p)  # the latent space is the same
    assert not torch.equal(state["dec_out.conv.weight"], source.state_dict()["dec_out.conv.weight"])


def test_average_models_writes_the_weighted_mean_and_refuses_other_architectures(load_script, tmp_path):
    recipe = load_script("average_models")
    a, b = tiny_transformer(seed=0), tiny_transformer(seed=1)
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    recipe.main(
        [str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "soup"), "--weights", "0.25,0.75"]
    )
    soup = VidGenTransformer3DModel.from_pretrained(tmp_path / "soup")
    pa, pb = a.state_dict(), b.state_dict()
    assert any(not torch.equal(pa[k], pb[k]) for k in pa)
    for name, p in soup.state_dict().items():
        torch.testing.assert_close(p, 0.25 * pa[name] + 0.75 * pb[name])

    with pytest.raises(SystemExit):  # the output is never replaced
        recipe.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "soup")])
    torch.testing.assert_close(
        VidGenTransformer3DModel.from_pretrained(tmp_path / "soup").state_dict(), soup.state_dict()
    )
    tiny_transformer(seed=0, caption_positions=16).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="caption_positions"):
        average_models([tmp_path / "a", tmp_path / "other"])
    with pytest.raises(ValueError, match="weights"):
        average_models([tmp_path / "a", tmp_path / "b"], [0.5, 0.6])
