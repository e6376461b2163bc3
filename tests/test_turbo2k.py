"""Turbo2K: token-grid maps, feature alignment, block features and residuals, the hierarchical pipeline,
and the distillation and adapter recipes, on tiny models."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vidgen import (
    TURBO2K_SUBFOLDER,
    TURBO2K_VAE_SUBFOLDER,
    HierarchicalAdapter,
    VidGenHierarchicalPipeline,
    VidGenPipeline,
    VidGenTransformer3DModel,
    VidGenVideoAutoencoder,
    save_turbo2k_student,
    turbo2k_components,
)
from vidgen.models.turbo2k import FeatureProjector, alignment_loss, pool_tokens, upsample_tokens
from vidgen.testing import randomize_, tiny_components, tiny_t5, tiny_transformer

PROMPT = "a red circle moves right"


def test_pooling_averages_regions_and_undoes_nearest_upsampling():
    x = torch.randn(2, 2 * 4 * 6, 3)  # (B, N, D) on the grid (2, 4, 6)
    pooled = pool_tokens(x, (2, 4, 6), (1, 2, 3))
    cube = x.reshape(2, 2, 4, 6, 3)  # (B, F, H, W, D)
    expected = cube[:, :, 2:4, 4:6].mean(dim=(1, 2, 3))  # the region of coarse token (0, 1, 2)
    torch.testing.assert_close(pooled[:, 1 * 3 + 2], expected)
    small = torch.randn(2, 2 * 3 * 3, 5)
    up = upsample_tokens(small, (2, 3, 3), (2, 6, 9))
    assert up.shape == (2, 2 * 6 * 9, 5)
    torch.testing.assert_close(pool_tokens(up, (2, 6, 9), (2, 3, 3)), small)
    with pytest.raises(ValueError, match="must divide"):
        pool_tokens(x, (2, 4, 6), (1, 3, 3))


def test_alignment_loss_is_minus_one_when_aligned_and_trains_only_the_student_side():
    teacher = torch.randn(2, 10, 8, requires_grad=True)
    assert alignment_loss(teacher, 3 * teacher).item() == pytest.approx(-1.0, abs=1e-6)
    assert alignment_loss(teacher, -teacher).item() == pytest.approx(1.0, abs=1e-6)
    projector = FeatureProjector(student_dim=4, teacher_dim=8, num_layers=2)
    alignment_loss(teacher, projector(torch.randn(2, 10, 4))).backward()
    assert teacher.grad is None  # the teacher is a target
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector.parameters())


def test_block_residuals_add_to_the_block_output_and_hidden_states_report_it():
    model = tiny_transformer()
    F, H, W = 2, 4, 4
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, F * H * W, 8, generator=g), torch.randn(1, 5, 16, generator=g)
    t = torch.tensor([500.0])
    base = model(x, text, t, None, F, H, W, output_hidden_states=True)
    assert len(base.hidden_states) == 2 and base.hidden_states[0].shape == (1, F * H * W, 16)
    torch.testing.assert_close(model(x, text, t, None, F, H, W).sample, base.sample)  # same without features
    zero = model(x, text, t, None, F, H, W, block_residuals={0: torch.zeros(1, F * H * W, 16)})
    torch.testing.assert_close(zero.sample, base.sample)
    r = torch.randn(1, F * H * W, 16, generator=g)
    guided = model(x, text, t, None, F, H, W, block_residuals={0: r}, output_hidden_states=True)
    torch.testing.assert_close(guided.hidden_states[0], base.hidden_states[0] + r)
    assert (guided.sample - base.sample).abs().max() > 1e-3
    with pytest.raises(ValueError, match="block_residuals keys"):
        model(x, text, t, None, F, H, W, block_residuals={2: r})


@pytest.fixture(scope="module")
def pipe():
    pipe = VidGenPipeline(**tiny_components())  # trained at 9 frames, 32x32 (token grid 3x8x8)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def hierarchical(pipe, adapter):
    out = VidGenHierarchicalPipeline.from_pipe(pipe, hierarchical_adapter=adapter)
    out.set_progress_bar_config(disable=True)
    return out


def test_a_zero_adapter_leaves_stage_two_the_plain_dit_and_a_trained_one_guides_it(pipe):
    adapter = HierarchicalAdapter(dim=16, blocks=(0, 1))
    hier = hierarchical(pipe, adapter)
    kw = dict(num_inference_steps=3, high_res_inference_steps=2, guidance_scale=2.0, output_type="latent")
    latents = hier(PROMPT, height=64, width=64, generator=torch.Generator().manual_seed(0), **kw).frames
    # Direct generation at 64x64 from the same stage-two noise (drawn after stage one's).
    g = torch.Generator().manual_seed(0)
    pipe.prepare_noise(1, (3, 8, 8), g, "cpu")
    noise = pipe.pack_latents(pipe.prepare_noise(1, (3, 16, 16), g, "cpu"))
    direct = pipe(PROMPT, height=64, width=64, num_inference_steps=2, guidance_scale=2.0, latents=noise,
                  output_type="latent").frames  # fmt: skip
    torch.testing.assert_close(latents, direct, atol=1e-4, rtol=1e-4)

    randomize_(adapter, seed=1, std=0.05)
    guided = hier(PROMPT, height=64, width=64, generator=torch.Generator().manual_seed(0), **kw).frames
    assert (guided - direct).abs().max() > 1e-3
    video = hier(PROMPT, generator=torch.Generator().manual_seed(0), num_inference_steps=2,
                 high_res_inference_steps=2, output_type="np").frames  # fmt: skip
    assert video.shape == (1, 9, 64, 64, 3) and np.isfinite(video).all()  # default: twice the model's size


def test_stage_two_with_strength_starts_from_the_upsampled_stage_one_latents(pipe, monkeypatch):
    hier = hierarchical(pipe, HierarchicalAdapter(dim=16, blocks=(1,)))
    full = hier.stage_sigmas(4, 256, 1.0, "cpu")
    assert len(full) == 5 and full[0] == 1 and full[-1] == 0
    torch.testing.assert_close(
        hier.stage_sigmas(4, 256, 0.5, "cpu"), full[2:]
    )  # the last ceil(0.5 * 4) steps
    calls = []
    denoise = VidGenHierarchicalPipeline.denoise

    def spy(self, latents, sigmas, *args, **kwargs):
        calls.append((latents.clone(), sigmas))
        out = denoise(self, latents, sigmas, *args, **kwargs)
        calls[-1] += (out,)
        return out

    monkeypatch.setattr(VidGenHierarchicalPipeline, "denoise", spy)
    g = torch.Generator().manual_seed(3)
    hier(PROMPT, height=64, width=64, num_inference_steps=2, high_res_inference_steps=4, strength=0.5,
         generator=g, output_type="latent")  # fmt: skip
    (_, _, low), (start, sigmas, _) = calls
    g = torch.Generator().manual_seed(3)
    pipe.prepare_noise(1, (3, 8, 8), g, "cpu")
    noise = pipe.pack_latents(pipe.prepare_noise(1, (3, 16, 16), g, "cpu"))
    up = pipe.unpack_latents(low, (3, 8, 8)).repeat_interleave(2, 3).repeat_interleave(2, 4)
    s = sigmas[0]
    assert len(sigmas) == 3 and 0 < s < 1
    torch.testing.assert_close(start, (1 - s) * pipe.pack_latents(up) + s * noise)


def test_hierarchical_pipeline_rejects_bad_sizes_and_strength(pipe):
    hier = hierarchical(pipe, HierarchicalAdapter(dim=16, blocks=(1,)))
    with pytest.raises(ValueError, match="integer multiple of the low resolution"):
        hier(PROMPT, height=48, width=64, num_inference_steps=1, high_res_inference_steps=1)
    with pytest.raises(ValueError, match="strength must be in"):
        hier(PROMPT, height=64, width=64, strength=0.0)
    with pytest.raises(ValueError, match="does not fit the transformer"):
        hierarchical(pipe, HierarchicalAdapter(dim=16, blocks=(5,)))(
            PROMPT, height=64, width=64, num_inference_steps=1, high_res_inference_steps=1
        )


class Killed(Exception):
    pass


def kill_after_checkpoint(recipe, monkeypatch, at_step: int):
    """Make the recipe die right after writing its checkpoint of ``at_step`` (as a SIGKILL would)."""
    save = recipe.save_checkpoint

    def save_then_die(folder, step, *args, **kwargs):
        save(folder, step, *args, **kwargs)
        if step == at_step:
            raise Killed

    monkeypatch.setattr(recipe, "save_checkpoint", save_then_die)


def assert_same_weights(a: Path, b: Path):
    from safetensors.torch import load_file

    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0)


def test_adapter_recipe_trains_only_the_adapter_and_resumes_exactly(load_script, pipe, tmp_path, monkeypatch):
    model_dir = tmp_path / "model"
    pipe.save_pretrained(model_dir)
    monkeypatch.setattr(sys, "argv", ["x"])
    recipe = load_script("train_hierarchical")
    loaded = []
    from_pretrained = VidGenPipeline.from_pretrained
    monkeypatch.setattr(
        recipe.VidGenPipeline,
        "from_pretrained",
        lambda *a, **k: loaded.append(from_pretrained(*a, **k)) or loaded[-1],
    )
    common = ["--model", str(model_dir), "--sizes", "64", "--clips", "32", "--blocks", "0,1", "--batch", "1",
              "--steps", "4", "--checkpoint-every", "2"]  # fmt: skip
    recipe.main(["--out", str(tmp_path / "straight"), *common])
    kill_after_checkpoint(recipe, monkeypatch, at_step=2)
    with pytest.raises(Killed):
        recipe.main(["--out", str(tmp_path / "killed"), *common])
    monkeypatch.setattr(recipe, "save_checkpoint", load_script("train_hierarchical").save_checkpoint)
    recipe.main(["--out", str(tmp_path / "killed"), *common])  # resumes at step 2
    rows = (tmp_path / "killed" / "log.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["0", "3"]  # logged every 5 steps and at the last
    name = "hierarchical_adapter/diffusion_pytorch_model.safetensors"
    assert_same_weights(tmp_path / "straight" / name, tmp_path / "killed" / name)

    adapter = HierarchicalAdapter.from_pretrained(tmp_path / "straight" / "hierarchical_adapter")
    assert adapter.config.blocks == [0, 1]
    assert any(p.abs().sum() > 0 for p in adapter.projections.parameters())  # it moved from zero
    for used in loaded:  # the recipe's own DiT: frozen and unchanged
        assert not any(p.requires_grad for p in used.transformer.parameters())
        for name, p in used.transformer.state_dict().items():
            torch.testing.assert_close(p, pipe.transformer.state_dict()[name])
    with pytest.raises(ValueError, match="other settings \\(blocks\\)"):
        recipe.main(["--out", str(tmp_path / "straight"), *common[:6], "--blocks", "1", *common[8:]])
    with pytest.raises(ValueError, match="--sizes must be multiples"):
        recipe.main(["--out", str(tmp_path / "bad"), *common[:2], "--sizes", "48", *common[4:]])


def test_distillation_recipe_trains_a_student_in_another_latent_space(
    load_script, pipe, tmp_path, monkeypatch
):
    teacher_dir = tmp_path / "teacher"
    pipe.save_pretrained(teacher_dir)
    vae_dir = tmp_path / "vae16"
    VidGenVideoAutoencoder(latent_channels=8, block_out_channels=(8, 8, 8), patch_size=4).save_pretrained(
        vae_dir
    )
    monkeypatch.setattr(sys, "argv", ["x"])
    recipe = load_script("distill_turbo2k")
    common = ["--teacher", str(teacher_dir), "--student-vae", str(vae_dir), "--clips", "64",
              "--cache", str(tmp_path / "cache"), "--student-layers", "2", "--student-head-dim", "8",
              "--teacher-block", "1", "--student-block", "0", "--batch", "2", "--steps", "4",
              "--checkpoint-every", "2"]  # fmt: skip
    recipe.main(["--out", str(tmp_path / "distilled"), *common])
    kill_after_checkpoint(recipe, monkeypatch, at_step=2)
    with pytest.raises(Killed):
        recipe.main(["--out", str(tmp_path / "killed"), *common])
    monkeypatch.setattr(recipe, "save_checkpoint", load_script("distill_turbo2k").save_checkpoint)
    recipe.main(["--out", str(tmp_path / "killed"), *common])  # resumes at step 2
    name = "pipeline/transformer/diffusion_pytorch_model.safetensors"
    assert_same_weights(tmp_path / "distilled" / name, tmp_path / "killed" / name)
    recipe.main(["--out", str(tmp_path / "plain"), "--align-weight", "0", *common])

    rows = [r.split(",") for r in (tmp_path / "distilled" / "distill_log.csv").read_text().splitlines()]
    assert rows[0][:4] == ["step", "loss", "diffusion", "align"]
    assert all(float(r[3]) != 0 for r in rows[1:])
    plain_rows = [r.split(",") for r in (tmp_path / "plain" / "distill_log.csv").read_text().splitlines()]
    assert all(float(r[3]) == 0 for r in plain_rows[1:])
    assert plain_rows[1][2] == rows[1][2]  # same data, noise and initial student: the same first loss

    recipe.main(
        ["--out", str(tmp_path / "bound"), "--align-weight", "0", "--attention-grounding", "1", *common]
    )
    bound = [r.split(",") for r in (tmp_path / "bound" / "distill_log.csv").read_text().splitlines()]
    assert bound[0] == ["step", "loss", "diffusion", "align", "binding", "seconds"]
    assert bound[1][2] == rows[1][2]  # the binding loss adds a term, the flow loss is the same
    assert any(float(r[4]) > 0 for r in bound[1:])
    for r in bound[1:]:
        assert float(r[1]) == pytest.approx(float(r[2]) + float(r[4]), rel=1e-5)
    with pytest.raises(ValueError, match="--attention-blocks must be"):
        recipe.main(
            ["--out", str(tmp_path / "bad"), "--attention-grounding", "1", "--attention-blocks", "2", *common]
        )

    student = VidGenPipeline.from_pretrained(tmp_path / "distilled" / "pipeline")
    student.set_progress_bar_config(disable=True)
    assert tuple(student.transformer.config.sample_size) == (5, 4, 4)  # 16x fewer tokens than (5, 16, 16)
    assert student.vae.spatial_compression_ratio == 16
    video = student(
        PROMPT, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
    )
    assert video.frames.shape == (1, 17, 64, 64, 3) and np.isfinite(video.frames).all()
    plain = VidGenTransformer3DModel.from_pretrained(tmp_path / "plain" / "pipeline" / "transformer")
    assert any(
        not torch.equal(p, plain.state_dict()[k]) for k, p in student.transformer.state_dict().items()
    )  # the alignment changed the training
    with pytest.raises(ValueError, match="--teacher-block must be in"):
        recipe.main(["--out", str(tmp_path / "bad"), *common[:14], "--teacher-block", "7", *common[16:]])
    VidGenVideoAutoencoder(latent_channels=8, block_out_channels=(8, 8, 8), patch_size=2).save_pretrained(
        vae_dir
    )
    with pytest.raises(ValueError, match="built from other student_vae"):
        recipe.main(["--out", str(tmp_path / "other"), *common])


def test_student_from_teacher_copies_the_listed_blocks_and_starts_the_latent_projections_new(
    load_script, pipe, monkeypatch
):
    monkeypatch.setattr(sys, "argv", ["x"])
    recipe = load_script("distill_turbo2k")
    teacher = pipe.transformer
    vae = VidGenVideoAutoencoder(latent_channels=8, block_out_channels=(8, 8, 8), patch_size=4)
    student = recipe.student_from_teacher(teacher, "1", vae, (5, 4, 4))
    assert student.config.num_layers == 1 and student.config.in_channels == 8
    assert tuple(student.config.sample_size) == (5, 4, 4)
    source = teacher.state_dict()
    for name, p in student.state_dict().items():
        if name.startswith("proj_"):
            assert p.shape != source[name].shape or not torch.equal(p, source[name])
        else:
            torch.testing.assert_close(
                p, source[name.replace("transformer_blocks.0.", "transformer_blocks.1.")]
            )
    torch.testing.assert_close(student.proj_out.weight, torch.zeros_like(student.proj_out.weight))
    with pytest.raises(ValueError, match="--student-from-teacher must list blocks in"):
        recipe.student_from_teacher(teacher, f"0,{len(teacher.transformer_blocks)}", vae, (5, 4, 4))


def test_a_student_saved_into_a_folder_in_float16_loads_back_and_samples_as_its_own_folder(pipe, tmp_path):
    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
    pipe.save_pretrained(teacher_dir)
    with pytest.raises(FileNotFoundError, match="has no Turbo2K student"):
        turbo2k_components(teacher_dir)
    vae = randomize_(
        VidGenVideoAutoencoder(latent_channels=8, block_out_channels=(8, 8, 8), patch_size=4), std=0.05
    )
    student = VidGenPipeline.from_pipe(pipe, vae=vae.eval(), transformer=tiny_transformer(seed=1))
    student.save_pretrained(student_dir)

    save_turbo2k_student(student_dir, teacher_dir)
    for sub in (TURBO2K_SUBFOLDER, TURBO2K_VAE_SUBFOLDER):
        stored = load_file(teacher_dir / sub / "diffusion_pytorch_model.safetensors")
        assert {t.dtype for t in stored.values()} == {torch.float16}  # half the size on disk
    assert sorted(p.name for p in teacher_dir.iterdir() if p.name.startswith(".")) == []  # no temporary left
    parts = turbo2k_components(teacher_dir)
    assert parts["transformer"].dtype == parts["vae"].dtype == torch.float32
    turbo = VidGenPipeline.from_pretrained(teacher_dir, **parts)
    turbo.set_progress_bar_config(disable=True)
    assert turbo.resolve_guidance_scale(None) == 1.0 and pipe.resolve_guidance_scale(None) == 2.0
    call = dict(height=32, width=32, num_inference_steps=2, guidance_scale=1.0, output_type="np")
    ours = turbo(PROMPT, generator=torch.Generator().manual_seed(0), **call).frames
    theirs = student(PROMPT, generator=torch.Generator().manual_seed(0), **call).frames
    assert ours.shape == theirs.shape == (1, 9, 32, 32, 3)
    assert np.abs(ours - theirs).max() < 0.02  # float16 storage only rounds the weights

    other = VidGenPipeline.from_pipe(student, text_encoder=tiny_t5(len(pipe.tokenizer), seed=5))
    other.save_pretrained(tmp_path / "other")
    before = (teacher_dir / TURBO2K_SUBFOLDER / "diffusion_pytorch_model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="another text encoder"):
        save_turbo2k_student(tmp_path / "other", teacher_dir)
    assert (teacher_dir / TURBO2K_SUBFOLDER / "diffusion_pytorch_model.safetensors").read_bytes() == before
