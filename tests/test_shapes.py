import numpy as np
import pytest

from vidgen.data import shapes
from vidgen.data.shapes import COLORS, ShapeObject, caption_of, parse_caption, render_clip, sample_clip


def test_native_clip_format_and_reproducibility():
    clip = sample_clip(7)
    assert clip.frames.shape == (17, 64, 64, 3) and clip.frames.dtype == np.uint8
    again = sample_clip(7)
    np.testing.assert_array_equal(clip.frames, again.frames)
    assert clip.caption == again.caption
    assert not np.array_equal(sample_clip(8).frames, clip.frames)


@pytest.mark.parametrize("seed", range(40))
def test_exact_colors_black_background_and_no_overlap(seed):
    clip = sample_clip(seed)
    pixels = {tuple(p) for p in clip.frames.reshape(-1, 3)}
    allowed = {(0, 0, 0)} | {COLORS[o.color] for o in clip.objects}
    assert pixels <= allowed and (0, 0, 0) in pixels
    masks = shapes.render_masks(clip.objects, clip.centers, clip.radii, 64, 64)
    assert masks.any(axis=(2, 3)).all()  # every object visible in every frame
    if len(clip.objects) == 2:
        assert not (masks[:, 0] & masks[:, 1]).any()
        assert clip.objects[0].color != clip.objects[1].color
    assert all(6 <= r <= 9 for r in clip.radii)


@pytest.mark.parametrize("motion", ["left", "right", "up", "down", "still"])
def test_motion_direction_speed_and_bounce(motion):
    for seed in range(20):
        clip = render_clip([ShapeObject("red", "square", motion)], seed, num_frames=60)
        steps = np.diff(clip.centers[:, 0], axis=0)  # (F-1, 2)
        if motion == "still":
            assert np.abs(steps).max() == 0
            continue
        axis = 0 if motion in ("left", "right") else 1
        sign = shapes.DIRECTIONS[motion][axis]
        speed = np.abs(clip.velocities[0, 0, axis])
        assert 1.5 <= speed <= 2.5
        np.testing.assert_allclose(steps[:8, axis], sign * speed)  # stated direction, first 8 frames
        assert np.all(steps[:, 1 - axis] == 0)
        r = clip.radii[0]
        assert clip.centers[:, 0, axis].min() >= r - 1e-9 and clip.centers[:, 0, axis].max() <= 64 - r + 1e-9
        assert (np.sign(steps[:, axis]) != sign).any()  # 60 frames at >= 1.5 px/frame must bounce


def test_new_direction_renders_but_is_never_sampled():
    for seed in range(20):
        clip = render_clip(
            [ShapeObject("red", "circle", "diagonally"), ShapeObject("blue", "square", "up")], seed
        )
        assert clip.caption == "a red circle moves diagonally and a blue square moves up"
        assert shapes.parse_caption(clip.caption) == clip.objects
        steps = np.diff(clip.centers[:9, 0], axis=0)  # (8, 2): down and to the right at the same speed
        assert np.all(steps > 0) and np.allclose(steps[:, 0], steps[:, 1])
        assert 1.5 <= np.linalg.norm(steps[0]) <= 2.5
    sampled = {o.motion for seed in range(300) for o in shapes.sample_clip(seed).objects}
    assert sampled == set(shapes.MOTIONS)
    with pytest.raises(ValueError, match="motions"):
        ShapeObject("red", "circle", "sideways")


def test_lora_benchmark_finds_the_diagonal_only_where_it_is(load_script):
    bench = load_script("bench_lora_concept", folder="benchmarks")
    trained, held_out = bench.concept_objects("diagonal")
    assert len(trained) == 14 and len(held_out) == 7 and not set(trained) & set(held_out)
    prompt = "a green triangle moves diagonally and a red circle stays still"
    for seed in range(5):
        truth = render_clip(shapes.parse_caption(prompt), seed).frames
        assert bench.concept_found("diagonal", truth, prompt)
        for motion in ("right", "down", "still"):
            other = render_clip(
                [ShapeObject("green", "triangle", motion), ShapeObject("red", "circle", "still")], seed
            )
            assert not bench.concept_found("diagonal", other.frames, prompt)


def test_lora_benchmark_companions_share_and_cycled_motions(load_script):
    bench = load_script("bench_lora_concept", folder="benchmarks")
    default = [c.caption for c in bench.training_clips("diagonal", 50, 25)[25:]]
    assert sum(" and " in c for c in default) == 12  # every other concept clip has a second object
    clips = bench.training_clips("diagonal", 50, 25, companions=0.68, cycle_motions=shapes.MOTIONS)[25:]
    pairs = [c.objects for c in clips if len(c.objects) == 2]
    assert len(pairs) == 17 and all(a.motion == "diagonally" and b.color != a.color for a, b in pairs)
    # the second objects' motions take the world's five in turn
    assert [b.motion for _, b in pairs[:10]] == [*shapes.MOTIONS, *shapes.MOTIONS]
    chosen = bench.training_clips("diagonal", 50, 25, companions=0.68, cycle_motions=("down", "left"))[25:]
    assert [c.objects[1].motion for c in chosen if len(c.objects) == 2][:4] == ["down", "left", "down", "left"]
    every = bench.training_clips("diagonal", 30, 0, companions=1.0)
    assert len(every) == 30 and all(len(c.objects) == 2 for c in every)


def test_any_size_and_length_scales_sizes_and_speeds():
    obj = [ShapeObject("blue", "circle", "right")]
    small, big = render_clip(obj, 3), render_clip(obj, 3, height=128, width=256, num_frames=40)
    assert big.frames.shape == (40, 128, 256, 3)
    assert big.radii[0] == pytest.approx(2 * small.radii[0])
    assert abs(big.velocities[0, 0, 0]) == pytest.approx(2 * abs(small.velocities[0, 0, 0]))


def test_triangle_and_square_geometry():
    tri = render_clip([ShapeObject("white", "triangle", "still")], 0)
    sq = render_clip([ShapeObject("white", "square", "still")], 0)
    area_tri, area_sq = (c.frames[0].any(-1).sum() for c in (tri, sq))
    r = tri.radii[0]
    assert area_tri == pytest.approx(2 * r * r, rel=0.15)  # base 2r x height 2r / 2
    assert area_sq == pytest.approx(4 * sq.radii[0] ** 2, rel=0.15)
    rows = np.where(tri.frames[0].any(-1).any(-1))[0]
    widths = tri.frames[0].any(-1).sum(-1)[rows]
    assert widths[0] < widths[-1]  # apex up


def test_captions_round_trip_and_held_out_split():
    objs = (ShapeObject("red", "circle", "right"), ShapeObject("cyan", "triangle", "still"))
    caption = caption_of(objs)
    assert caption == "a red circle moves right and a cyan triangle stays still"
    assert parse_caption(caption) == objs
    with pytest.raises(ValueError, match="not a Shapes-world caption"):
        parse_caption("a red circle flies away")
    rng = np.random.default_rng(0)
    train = {caption_of(shapes.sample_objects(rng, 2)) for _ in range(300)}
    held = {caption_of(shapes.sample_objects(rng, 2, held_out=True)) for _ in range(100)}
    assert not train & held
    assert all(shapes.is_held_out(parse_caption(c)) for c in held)
