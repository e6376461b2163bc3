"""Training media: discovery, buckets, frame sampling, skipping bad files; the trainer's config."""

import json
import warnings

import numpy as np
import PIL.Image
import pytest

from vidgen.data import shapes
from vidgen.data.video_dataset import (
    Bucket,
    MediaItem,
    SkipMedia,
    choose_bucket,
    discover_media,
    load_clip,
    parse_buckets,
)
from vidgen.training import load_config
from vidgen.video_io import export_to_video


def write_clip(folder, name, seed, frames=17, fps=8, caption=True, size=64):
    clip = shapes.sample_clip(seed, num_frames=frames, height=size, width=size)
    export_to_video(clip.frames, folder / f"{name}.mp4", fps=fps)
    if caption:
        (folder / f"{name}.txt").write_text(clip.caption + "\n")
    return clip


def test_folder_with_captions_images_and_subfolders(tmp_path):
    write_clip(tmp_path, "a", 0)
    (tmp_path / "sub").mkdir()
    write_clip(tmp_path / "sub", "b", 1)
    write_clip(tmp_path, "no_caption", 2, caption=False)
    PIL.Image.fromarray(shapes.sample_clip(3).frames[0]).save(tmp_path / "img.png")
    (tmp_path / "img.txt").write_text("a red circle stays still")
    items, problems = discover_media(tmp_path)
    assert sorted(i.path.name for i in items) == ["a.mp4", "b.mp4", "img.png"]
    assert [i.caption for i in items if i.path.name == "img.png"] == ["a red circle stays still"]
    assert problems == ["no_caption.mp4: no caption file no_caption.txt"]


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_metadata_files_with_named_or_default_columns(tmp_path, kind):
    write_clip(tmp_path, "a", 0)
    write_clip(tmp_path, "b", 1)
    rows = [{"video": "a.mp4", "prompt": "first"}, {"video": "b.mp4", "prompt": ""}]
    if kind == "csv":
        (tmp_path / "metadata.csv").write_text("video,prompt\na.mp4,first\nb.mp4,\n")
    else:
        (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    items, problems = discover_media(tmp_path)  # the folder holds the metadata file: it wins
    assert [(i.path.name, i.caption) for i in items] == [("a.mp4", "first")]
    assert len(problems) == 1 and "empty prompt" in problems[0]
    with pytest.raises(ValueError, match="data.caption_column"):
        discover_media(tmp_path / f"metadata.{kind}", caption_column="text")


def test_bucket_rules_name_the_stride():
    assert parse_buckets(["17x64x64", [1, 32, 64], "17x64x64"], 4, 8) == [Bucket(1, 32, 64), Bucket(17, 64, 64)]
    with pytest.raises(ValueError, match=r"k\*4 \+ 1.*try 17"):
        parse_buckets(["16x64x64"], 4, 8)
    with pytest.raises(ValueError, match="multiples of 8"):
        parse_buckets(["17x60x64"], 4, 8)
    with pytest.raises(ValueError, match="FRAMESxHEIGHTxWIDTH"):
        parse_buckets(["17x64"], 4, 8)


def test_bucket_choice_longest_then_aspect_then_area():
    buckets = [Bucket(9, 64, 64), Bucket(17, 64, 64), Bucket(17, 32, 64), Bucket(17, 64, 128)]
    assert choose_bucket(buckets, 20, 90, 160) == Bucket(17, 64, 128)  # 16:9 -> the 2:1 ones, larger
    assert choose_bucket(buckets, 20, 100, 100) == Bucket(17, 64, 64)
    assert choose_bucket(buckets, 12, 100, 100) == Bucket(9, 64, 64)
    assert choose_bucket(buckets, 5, 100, 100) is None


def test_frames_are_sampled_at_the_target_fps_and_center_cropped(tmp_path):
    objects = (shapes.ShapeObject("red", "circle", "right"),)
    clip = shapes.render_clip(objects, 4, num_frames=33)
    export_to_video(clip.frames, tmp_path / "fast.mp4", fps=16)  # 16 fps source, sampled at 8 fps
    frames, bucket = load_clip(MediaItem(tmp_path / "fast.mp4", "x"), [Bucket(17, 32, 32)], fps=8)
    assert bucket == Bucket(17, 32, 32) and frames.shape == (17, 32, 32, 3)
    # Every other source frame, downscaled 2x: the object centre moves as the source's does.
    for k in (0, 8, 16):
        ys, xs = np.nonzero(frames[k].max(-1) > 100)
        assert abs(xs.mean() * 2 - clip.centers[2 * k, 0, 0]) < 2.5
        assert abs(ys.mean() * 2 - clip.centers[2 * k, 0, 1]) < 2.5
    # A wide frame is cropped at the centre, not squeezed.
    wide = np.zeros((1, 32, 96, 3), np.uint8)
    wide[:, :, 40:56] = 255
    PIL.Image.fromarray(wide[0]).save(tmp_path / "wide.png")
    frames, _ = load_clip(MediaItem(tmp_path / "wide.png", "x"), [Bucket(1, 32, 32), Bucket(17, 32, 32)], fps=8)
    assert frames.shape == (1, 32, 32, 3)
    assert frames[0, :, 8:24].min() > 200 and frames[0, :, :6].max() < 30


def test_bad_and_short_files_are_skipped_with_a_reason(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    write_clip(tmp_path, "short", 5, frames=5)
    buckets = [Bucket(1, 32, 32), Bucket(17, 32, 32)]
    with pytest.raises(SkipMedia, match="bad.mp4: unreadable"):
        load_clip(MediaItem(tmp_path / "bad.mp4", "x"), buckets, 8)
    with pytest.raises(SkipMedia, match="too short"):  # a video never falls into the image bucket
        load_clip(MediaItem(tmp_path / "short.mp4", "x"), buckets, 8)
    PIL.Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "img.png")
    with pytest.raises(SkipMedia, match="one-frame bucket"):
        load_clip(MediaItem(tmp_path / "img.png", "x"), [Bucket(17, 32, 32)], 8)


def test_config_file_overrides_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("output_dir: out\ndata:\n  path: d\ntrain:\n  learning_rate: 1e-4\n")
    config = load_config(path, ["--train.max_steps", "7", "--lora.target_modules", "[to_q, to_v]", "--seed=3"])
    assert config.train.learning_rate == 1e-4 and config.train.max_steps == 7 and config.seed == 3
    assert config.lora.target_modules == ["to_q", "to_v"]
    for overrides, message in (
        (["--train.max_steps", "1.5"], "train.max_steps must be int"),
        (["--train.nope", "1"], "unknown key"),
        (["--lora.rank", "0"], "lora.rank must be >= 1"),
        (["--train.mixed_precision", "fp8"], "mixed_precision"),
        (["max_steps", "3"], "expected --section.key"),
    ):
        with pytest.raises(ValueError, match=message):
            load_config(path, overrides)
    path.write_text("output_dir: out\ndata:\n  path: d\n  colour: red\n")
    with warnings.catch_warnings(), pytest.raises(ValueError, match=r"data\.colour"):
        load_config(path)
