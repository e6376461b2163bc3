"""The evaluator reads clean renders of the Shapes world perfectly."""

import numpy as np
import pytest

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


def test_misses_name_what_was_read_wrong():
    objects = (shapes.ShapeObject("red", "circle", "right"), shapes.ShapeObject("blue", "square", "left"))
    clip = shapes.render_clip(objects, seed=3)
    assert ev.misses(ev.read_video(clip.frames, clip.caption)) == []
    # A caption with the motions swapped: each object took the other one's motion (a binding failure).
    report = ev.read_video(clip.frames, "a red circle moves left and a blue square moves right")
    assert ev.misses(report) == [
        "red circle: motion right (not left, the other's)", "blue square: motion left (not right, the other's)"
    ]  # fmt: skip
    assert ev.misses(ev.read_video(clip.frames, "a green triangle moves up")) == ["green triangle: missing"]
    # The red circle leaps 30 px down in frame 3: the track jumps (and a wrong shape is read).
    frames = clip.frames.copy()
    frames[3] = 0
    red = np.all(clip.frames[3] == shapes.COLORS["red"], axis=-1)
    frames[3][np.roll(red, 30, axis=0)] = shapes.COLORS["red"]
    frames[3][np.all(clip.frames[3] == shapes.COLORS["blue"], axis=-1)] = shapes.COLORS["blue"]
    report = ev.read_video(frames, "a red square moves right and a blue square moves left")
    assert report.largest_step["red"] > ev.JUMP_PIXELS > report.largest_step["blue"]
    assert ev.misses(report)[0] == "red square: shape circle (not square), track jumps 30 px"


def test_a_taught_color_is_read_only_with_the_extended_palette():
    objects = (
        shapes.ShapeObject("orange", "triangle", "left"),
        shapes.ShapeObject("blue", "circle", "still"),
    )
    clip = shapes.render_clip(objects, 9)
    assert clip.caption == "an orange triangle moves left and a blue circle stays still"
    assert shapes.parse_caption(clip.caption) == objects
    assert (clip.frames == shapes.NEW_COLORS["orange"]).all(-1).any()
    extended = ev.summarize(
        [ev.read_video(clip.frames, clip.caption, colors=shapes.COLORS | shapes.NEW_COLORS)]
    )
    assert extended["color"] == extended["shape"] == extended["direction"] == 100.0
    world_only = ev.read_video(clip.frames, clip.caption)  # orange is read as a world color
    assert "orange" not in world_only.found and len(world_only.found) == 2
    assert all(o.color != "orange" for o in shapes.all_single_objects())  # never sampled for training


def test_a_taught_size_is_measured_by_the_bounding_box():
    big = shapes.ShapeObject("red", "square", "right", size="big")
    clip = shapes.render_clip((big, shapes.ShapeObject("blue", "circle", "still")), 12)
    assert clip.caption == "a big red square moves right and a blue circle stays still"
    assert shapes.parse_caption(clip.caption) == clip.objects
    report = ev.read_video(clip.frames, clip.caption)
    assert report.sides["red"] >= ev.BIG_SIDE > 18 >= report.sides["blue"]
    world = [ev.read_video(c.frames, c.caption) for c in map(shapes.sample_clip, range(40))]
    assert max(side for r in world for side in r.sides.values()) < ev.BIG_SIDE  # the world has no big ones


def test_long_videos_are_scored_window_by_window_and_drift_is_caught():
    from vidgen.eval import score_windows

    clip = shapes.render_clip(shapes.parse_caption("a green square moves left"), seed=3, num_frames=81)
    rows = score_windows(clip.frames, clip.caption)
    assert [r["start"] for r in rows] == [0, 16, 32, 48, 64]
    for r in rows:  # ground truth: right in every window, black background
        assert (r["count"], r["color"], r["shape"], r["speed"], r["background"]) == (100, 100, 100, 100, 0)
        assert r["size_stability"] > 90
    drifted = clip.frames.copy()
    drifted[48:] = np.maximum(drifted[48:], 90)  # over-exposure from frame 48 on
    drifted[64:] = 0  # and a lost object at the end
    rows = score_windows(drifted, clip.caption)
    assert [r["background"] for r in rows] == [0, 0, 0, 90, 0]
    assert rows[-1]["count"] == 0 and rows[-1]["color"] == 0 and rows[0]["count"] == 100
    frozen = np.repeat(clip.frames[:1], 81, axis=0)  # a frozen video: the object no longer moves
    assert all(r["speed"] == 0 for r in score_windows(frozen, clip.caption))


def test_evaluate_passes_the_guidance_scale_to_every_task(monkeypatch):
    from vidgen import VidGenPipeline
    from vidgen.eval import evaluate
    from vidgen.pipelines import common
    from vidgen.testing import tiny_components

    pipe = VidGenPipeline(**tiny_components())
    pipe.set_progress_bar_config(disable=True)
    seen = []
    predict = common.VidGenPipelineBase.predict_velocity

    def spy(self, latents, timestep, prompt_embeds, prompt_mask, grid, frame_rate, guidance_scale, *a, **k):
        seen.append((type(self).__name__, guidance_scale))
        return predict(self, latents, timestep, prompt_embeds, prompt_mask, grid, frame_rate, guidance_scale, *a, **k)

    monkeypatch.setattr(common.VidGenPipelineBase, "predict_velocity", spy)
    evaluate(pipe, ("t2v", "i2v", "predict"), n=1, steps=1, guidance_scale=5.0)
    assert {name for name, _ in seen} == {
        "VidGenPipeline", "VidGenImageToVideoPipeline", "VidGenMaskedVideoPipeline"
    }  # fmt: skip
    assert {g for _, g in seen} == {5.0}
    seen.clear()  # without a scale, every task samples at the folder's own default
    pipe.register_to_config(default_guidance_scale=1.5)
    evaluate(pipe, ("t2v", "i2v", "predict"), n=1, steps=1)
    assert len({name for name, _ in seen}) == 3 and {g for _, g in seen} == {1.5}


def test_evaluate_by_objects_splits_one_and_two_object_captions():
    from vidgen import VidGenPipeline
    from vidgen.eval import evaluate
    from vidgen.testing import tiny_components

    pipe = VidGenPipeline(**tiny_components())
    pipe.set_progress_bar_config(disable=True)
    results = evaluate(pipe, ("t2v", "predict"), n=4, steps=1, by_objects=True)  # clips alternate 1, 2 objects
    assert list(results) == [
        "t2v", "t2v, 1 object", "t2v, 2 objects", "predict", "predict, 1 object", "predict, 2 objects"
    ]  # fmt: skip
    for task in ("t2v", "predict"):
        whole, one, two = results[task], results[f"{task}, 1 object"], results[f"{task}, 2 objects"]
        # two videos of each kind: per-video metrics average the halves; per-object ones weigh 2 : 4
        assert whole["count"] == pytest.approx((one["count"] + two["count"]) / 2)
        assert whole["color"] == pytest.approx((2 * one["color"] + 4 * two["color"]) / 6)
    whole, one, two = (results[k]["centroid_error_px"] for k in ("predict", "predict, 1 object", "predict, 2 objects"))
    assert whole == pytest.approx((one + two) / 2)


def test_evaluate_pools_several_seeds_and_keeps_a_row_per_seed():
    from vidgen import VidGenPipeline
    from vidgen.eval import evaluate
    from vidgen.testing import tiny_components

    pipe = VidGenPipeline(**tiny_components())
    pipe.set_progress_bar_config(disable=True)
    seen = []
    results = evaluate(pipe, ("predict",), n=2, steps=1, seed=[0, 7], on_video=lambda *a: seen.append(a[4]))
    assert list(results) == ["predict", "predict, seed 0", "predict, seed 7"]
    assert seen == [0, 0, 7, 7]  # each clip once per seed
    pooled, first, second = results.values()
    for metric in ("count", "color", "direction", "centroid_error_px"):  # equal halves: the mean of the seeds
        assert pooled[metric] == pytest.approx((first[metric] + second[metric]) / 2)
    # a seed's row is what that seed alone scores
    assert evaluate(pipe, ("predict",), n=2, steps=1, seed=7)["predict"] == pytest.approx(second)
    with pytest.raises(ValueError, match="distinct"):
        evaluate(pipe, ("predict",), n=2, steps=1, seed=[3, 3])
