"""The evaluator reads clean renders of the Shapes world perfectly."""

import numpy as np

from vidgen import eval as ev
from vidgen.data import shapes


def test_clean_renders_score_100_percent():
    reports = []
    for seed in range(120):
        clip = shapes.sample_clip(shapes.EVAL_SEED_OFFSET + seed, held_out=seed % 2 == 0)
        reports.append(ev.read_video(clip.frames, clip.caption))
    scores = ev.summarize(reports)
    for key in ("color", "shape", "direction", "count", "count_stability"):
        assert scores[key] == 100.0, (key, scores)
    assert scores["size_stability"] > 97


def test_centroids_and_psnr_on_ground_truth():
    clip = shapes.sample_clip(shapes.EVAL_SEED_OFFSET + 5)
    assert ev.centroid_error(clip.frames, clip, range(17)) < 0.6
    assert ev.psnr(clip.frames[0], clip.frames[0]) == float("inf")
    shifted = np.roll(clip.frames, 6, axis=2)  # everything 6 px to the right
    assert ev.centroid_error(shifted, clip, range(17)) > 3


def test_wrong_videos_are_caught():
    obj = shapes.ShapeObject("red", "circle", "right")
    clip = shapes.render_clip([obj], seed=1)
    assert ev.read_video(clip.frames, "a blue circle moves right").per_object("color") == [False]
    assert ev.read_video(clip.frames, "a red square moves right").per_object("shape") == [False]
    assert ev.read_video(clip.frames, "a red circle moves left").per_object("motion") == [False]
    assert not ev.read_video(np.zeros_like(clip.frames), clip.caption).count_ok
