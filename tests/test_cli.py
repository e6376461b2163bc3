"""The `vidgen` command line, run as a user would, on a tiny pipeline folder made here."""

import importlib.metadata
import shutil
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from vidgen import (
    HIERARCHICAL_SUBFOLDER,
    HierarchicalAdapter,
    VidGenPipeline,
    VidGenVideoAutoencoder,
    load_video,
    save_turbo2k_student,
)
from vidgen.testing import randomize_, tiny_components, tiny_transformer

CLI = [sys.executable, "-m", "vidgen.cli"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny"
    VidGenPipeline(**tiny_components()).save_pretrained(path)
    return path


def vidgen(*args, cwd=None):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_console_script_is_declared():
    (entry,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "vidgen"]
    assert entry.value == "vidgen.cli:main"


def test_t2v_writes_a_playable_mp4_of_the_requested_size(model_dir, tmp_path):
    out = tmp_path / "clip.mp4"
    result = vidgen(
        "t2v", "--model", model_dir, "--prompt", "a red circle moves right", "--height", 32, "--width", 48,
        "--frames", 13, "--steps", 2, "--fps", 8, "--seed", 1, "--output", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    video = load_video(out)
    assert len(video) == 13 and video[0].size == (48, 32)
    assert out.read_bytes()[4:8] == b"ftyp"  # an mp4 container


def test_i2v_starts_from_the_image(model_dir, tmp_path):
    image = tmp_path / "first.png"
    PIL.Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)).save(image)
    out = tmp_path / "clip.gif"
    result = vidgen(
        "i2v",
        "--model",
        model_dir,
        "--image",
        image,
        "--prompt",
        "a",
        "--frames",
        5,
        "--steps",
        2,
        "--output",
        out,
    )
    assert result.returncode == 0, result.stderr
    assert len(load_video(out)) == 5 and load_video(out)[0].size == (32, 32)


def test_refuses_to_replace_an_existing_output(model_dir, tmp_path):
    out = tmp_path / "clip.mp4"
    out.write_bytes(b"keep me")
    result = vidgen("t2v", "--model", model_dir, "--prompt", "a", "--output", out)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"vidgen t2v: error: --output {out} already exists; pass --overwrite to replace it"
    ]
    assert out.read_bytes() == b"keep me"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--frames", "10"], "num_frames must be of the form k*4 + 1"),
        (["--height", "30"], "height must be a positive multiple of 4"),
        (["--steps", "zero"], "argument --steps: must be an integer >= 1"),
        (["--attention", "magic"], "argument --attention: invalid choice"),
        (["--output", "clip.avi"], "--output must end in .mp4 or .gif"),
        (["--model", "no/such/folder"], "--model no/such/folder: no such folder"),
    ],
)
def test_bad_input_is_one_line_without_traceback(model_dir, tmp_path, args, message):
    base = {"--model": str(model_dir), "--prompt": "a", "--output": str(tmp_path / "x.mp4")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    result = vidgen("t2v", *[x for kv in base.items() for x in kv], cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_scripts_wrap_the_cli(model_dir, tmp_path):
    from pathlib import Path

    script = Path(__file__).parents[1] / "scripts" / "text_to_video.py"
    out = tmp_path / "s.gif"
    result = subprocess.run(
        [sys.executable, str(script), "--model", str(model_dir), "--prompt", "a", "--frames", "5", "--steps", "1", "--output", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(load_video(out)) == 5


def test_predict_and_interpolate_keep_the_video_size(model_dir, tmp_path):
    from vidgen import export_to_video
    from vidgen.data.shapes import sample_clip

    source = tmp_path / "in.gif"
    clip = sample_clip(0, height=32, width=32)
    export_to_video(clip.frames, source, fps=8)
    for command, flag in (("predict", ["--given", "5"]), ("interpolate", ["--every", "4"])):
        out = tmp_path / f"{command}.gif"
        result = vidgen(
            command, "--model", model_dir, "--video", source, *flag, "--steps", 1, "--output", out
        )
        assert result.returncode == 0, result.stderr
        video = load_video(out)
        assert len(video) == 17 and video[0].size == (32, 32)
        first = np.asarray(video[0]).astype(int)
        assert (
            np.abs(first - np.asarray(load_video(source)[0]).astype(int)).mean() < 2
        )  # the given first frame
    result = vidgen(
        "predict", "--model", model_dir, "--video", tmp_path / "missing.mp4", "--output", tmp_path / "p.gif"
    )
    assert result.returncode == 2 and "missing.mp4" in result.stderr


def test_attention_kind_flags(model_dir, tmp_path):
    common = ["--model", model_dir, "--prompt", "a red circle moves right", "--steps", 2, "--frames", 5]
    out = tmp_path / "draft.mp4"
    result = vidgen("t2v", *common, "--height", 32, "--width", 64, "--attention", "draft", "--sparsity", 0.5,
                    "--output", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert load_video(out)[0].size == (64, 32)
    out = tmp_path / "freeswim.mp4"
    result = vidgen("t2v", *common, "--height", 64, "--width", 64, "--freeswim", "--output", out)
    assert result.returncode == 0, result.stderr
    assert load_video(out)[0].size == (64, 64)
    for flags, message in [
        (["--attention", "draft", "--freeswim", "--height", 64], "cannot be combined"),
        (["--sparsity", 0.5], "--sparsity applies to --attention draft only"),
        (["--attention", "draft", "--sparsity", 1.5], "--sparsity must be in [0, 1)"),
        (["--freeswim"], "--freeswim is for sizes above the model's 32x32"),
        (["--strength", 0.5], "--strength applies to --freeswim or --hierarchical only"),
    ]:
        result = vidgen("t2v", *common, *flags, "--output", tmp_path / "x.mp4")
        assert result.returncode == 2 and message in result.stderr, result.stderr


def test_hierarchical_generates_above_the_model_size_with_the_adapter_subfolder(model_dir, tmp_path):
    common = ["t2v", "--prompt", "a red circle moves right", "--steps", 2, "--frames", 5, "--hierarchical"]
    result = vidgen(*common, "--model", model_dir, "--output", tmp_path / "x.mp4")
    assert result.returncode == 2 and f"has no {HIERARCHICAL_SUBFOLDER}/ for --hierarchical" in result.stderr
    folder = tmp_path / "with_adapter"
    shutil.copytree(model_dir, folder)
    HierarchicalAdapter(dim=16, blocks=(1,)).save_pretrained(folder / HIERARCHICAL_SUBFOLDER)
    out = tmp_path / "high.mp4"
    result = vidgen(*common, "--model", folder, "--high-res-steps", 2, "--output", out)
    assert result.returncode == 0, result.stderr
    assert len(load_video(out)) == 5 and load_video(out)[0].size == (64, 64)  # twice the model's 32x32
    for flags, message in [
        (["--height", 32, "--width", 32], "--hierarchical is for sizes above the model's 32x32"),
        (["--freeswim"], "--hierarchical does not combine with"),
    ]:
        result = vidgen(*common, "--model", folder, *flags, "--output", tmp_path / "y.mp4")
        assert result.returncode == 2 and message in result.stderr, result.stderr
    result = vidgen("t2v", "--model", folder, "--prompt", "a", "--high-res-steps", 2, "--output", tmp_path / "z.mp4")
    assert result.returncode == 2 and "--high-res-steps applies with --hierarchical only" in result.stderr


def test_turbo_samples_with_the_student_the_model_folder_keeps(model_dir, tmp_path):
    common = ["t2v", "--prompt", "a red circle moves right", "--steps", 2, "--frames", 5, "--turbo"]
    result = vidgen(*common, "--model", model_dir, "--output", tmp_path / "x.mp4")
    assert (
        result.returncode == 2 and "has no transformer_turbo2k/ and vae_turbo2k/ for --turbo" in result.stderr
    )
    folder, student = tmp_path / "with_student", tmp_path / "student"
    shutil.copytree(model_dir, folder)
    teacher = VidGenPipeline.from_pretrained(model_dir)
    vae = VidGenVideoAutoencoder(latent_channels=8, block_out_channels=(8, 8, 8), patch_size=4)
    VidGenPipeline.from_pipe(
        teacher, vae=randomize_(vae, std=0.05), transformer=tiny_transformer(seed=1)
    ).save_pretrained(student)
    save_turbo2k_student(student, folder)
    out = tmp_path / "turbo.mp4"
    result = vidgen(*common, "--model", folder, "--height", 32, "--width", 32, "--output", out)
    assert result.returncode == 0, result.stderr
    assert len(load_video(out)) == 5 and load_video(out)[0].size == (32, 32)
    for flags in (["--hierarchical"], ["--autoregressive"], ["--freeswim", "--height", 64]):
        result = vidgen(*common, "--model", folder, *flags, "--output", tmp_path / "y.mp4")
        assert result.returncode == 2 and "--turbo does not combine with" in result.stderr, result.stderr
    result = vidgen("eval", "--model", folder, "--turbo", "--num", 1, "--steps", 1, "--tasks", "t2v")
    assert result.returncode == 0 and "| t2v |" in result.stdout, result.stderr


def test_hierarchical_with_the_embedded_default_needs_no_model_flag(tmp_path):
    out = tmp_path / "big.mp4"
    result = vidgen("t2v", "--prompt", "a red circle moves right", "--hierarchical", "--steps", 4,
                    "--high-res-steps", 2, "--output", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    frames = load_video(out)
    assert len(frames) == 17 and frames[0].size == (128, 128)  # twice the default's 64x64


def test_eval_misses_lists_each_object_read_wrong(model_dir):
    result = vidgen("eval", "--model", model_dir, "--num", 2, "--steps", 1, "--tasks", "t2v", "--misses")
    assert result.returncode == 0, result.stderr
    table, listing = result.stdout.split(" objects read wrong:")
    assert "| t2v |" in table
    lines = listing.strip().splitlines()
    # A random tiny model draws no objects: each of the 3 objects of the 2 held-out captions is missing.
    assert int(table.split()[-1]) == len(lines) == 3
    assert all(line.startswith("t2v #") and line.endswith(": missing") for line in lines)


def test_eval_with_several_seeds_adds_a_row_per_seed(model_dir):
    result = vidgen("eval", "--model", model_dir, "--num", 1, "--steps", 1, "--tasks", "t2v", "--seed", "0,5",
                    "--misses")  # fmt: skip
    assert result.returncode == 0, result.stderr
    for row in ("| t2v |", "| t2v, seed 0 |", "| t2v, seed 5 |"):
        assert row in result.stdout
    assert "t2v #0 (seed 5)" in result.stdout
    bad = vidgen("eval", "--model", model_dir, "--seed", "1,1")
    assert bad.returncode != 0 and "--seed" in bad.stderr and "distinct" in bad.stderr


def test_sampler_flag_sets_the_schedulers_steps(model_dir, tmp_path):
    runs = {}
    for sampler in ("euler", "stochastic"):
        out = tmp_path / f"{sampler}.mp4"
        result = vidgen("t2v", "--model", model_dir, "--prompt", "a red circle moves right", "--steps", 3,
                        "--sampler", sampler, "--output", out)  # fmt: skip
        assert result.returncode == 0, result.stderr
        runs[sampler] = np.asarray(load_video(out), dtype=np.float32)
    assert np.abs(runs["euler"] - runs["stochastic"]).max() > 0  # fresh noise at each level changes the video
    bad = vidgen("t2v", "--model", model_dir, "--prompt", "a", "--autoregressive", "--sampler", "euler",
                 "--output", tmp_path / "x.mp4")  # fmt: skip
    assert bad.returncode == 2 and "--sampler" in bad.stderr


def test_t2v_samples_at_the_folders_own_guidance_unless_told(tmp_path):
    folder = tmp_path / "student"
    VidGenPipeline(**tiny_components(), default_guidance_scale=1.0).save_pretrained(folder)
    runs = {}
    for name, flags in (("folder", []), ("off", ["--guidance", 1]), ("two", ["--guidance", 2])):
        out = tmp_path / f"{name}.mp4"
        result = vidgen("t2v", "--model", folder, "--prompt", "a red circle moves right", "--steps", 2,
                        *flags, "--output", out)  # fmt: skip
        assert result.returncode == 0, result.stderr
        runs[name] = np.asarray(load_video(out), dtype=np.float32)
    np.testing.assert_array_equal(runs["folder"], runs["off"])
    assert np.abs(runs["folder"] - runs["two"]).max() > 0
