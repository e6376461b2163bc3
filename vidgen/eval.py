"""The Shapes-world evaluator: reads videos and scores them against captions and ground-truth physics.

Detection: every pixel takes the nearest color of the palette plus black; connected non-black regions
large enough are objects, each with the majority color of its pixels (a clip's objects have distinct
colors), so the off-color fringes and tints a blurry decoder leaves stay part of their object. Per object and frame it measures area,
bounding box and its centre; the shape is the template (inscribed circle, full square, upward
triangle) with the best overlap with the object inside its bounding box, and the motion comes from
the centre track over the first frames. Blurry but correct videos (the VAE's reconstructions of the
ground truth) read correctly.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .data import shapes

MIN_AREA = 30  # pixels at 64x64; the smallest object (triangle, r = 6) has 72
MIN_RELATIVE_AREA = 0.15  # and at least this share of the largest object's area
STILL_PIXELS = 2.0  # total centroid travel over the judged frames below this (at 64x64) is "still"
BIG_SIDE = 22.0  # bounding-box side (at 64x64) from which an object is "big": the world's are at most 18
# A centroid step between consecutive frames (at 64x64) beyond this is a jump: the world's fastest object
# moves 2.5 px per frame, so a jump is a second blob of the color or an object that re-appeared elsewhere.
JUMP_PIXELS = 8.0


@dataclass
class Detection:
    color: str
    area: float
    centroid: np.ndarray  # (x, y) pixels: the bounding-box centre, which is the world's object centre
    shape: str
    side: float = 0.0  # the bounding box's longer side, pixels


def nearest_color(pixels: np.ndarray, colors: dict) -> tuple[np.ndarray, list[str | None]]:
    """``(..., 3)`` uint8 pixels -> the index of each one's nearest color among black and ``colors``
    (``(...)``; 0 is black), and the names those indices stand for (``None`` for black)."""
    palette = np.array([(0, 0, 0), *colors.values()], float)
    return ((pixels[..., None, :].astype(float) - palette) ** 2).sum(-1).argmin(-1), [None, *colors]


def detect(frame: np.ndarray, colors: dict | None = None) -> list[Detection]:
    """Objects in one ``(H, W, 3)`` uint8 frame: connected non-black regions, each colored by the
    majority palette color of its pixels (one object per color: the largest region wins).

    ``colors``: the palette (default the world's ``shapes.COLORS``; add ``shapes.NEW_COLORS`` to
    recognise taught concepts)."""
    H, W, _ = frame.shape
    scale = min(H, W) / shapes.NATIVE_SIZE
    colors = shapes.COLORS if colors is None else colors
    nearest, names = nearest_color(frame, colors)  # (H, W), 0 = black
    regions, n = ndimage.label(nearest > 0, structure=np.ones((3, 3)))
    if n == 0:
        return []
    areas = np.bincount(regions.ravel())[1:]
    found: dict[str, Detection] = {}
    for k in np.flatnonzero((areas >= MIN_AREA * scale**2) & (areas >= MIN_RELATIVE_AREA * areas.max())) + 1:
        ys, xs = np.nonzero(regions == k)
        color = names[np.bincount(nearest[ys, xs], minlength=len(names))[1:].argmax() + 1]
        if color in found and found[color].area >= len(xs):
            continue
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        mask = np.zeros((y1 - y0, x1 - x0), bool)
        mask[ys - y0, xs - x0] = True
        center = np.array([(x0 + x1) / 2, (y0 + y1) / 2])  # the bounding box's centre
        found[color] = Detection(color, float(len(xs)), center, classify_shape(mask), float(max(mask.shape)))
    return list(found.values())


def classify_shape(mask: np.ndarray) -> str:
    """The template with the best IoU inside the object's bounding box ``mask`` ``(h, w)``."""
    h, w = mask.shape
    y, x = (np.mgrid[0:h, 0:w] + 0.5) / np.array([h, w])[:, None, None]  # in [0, 1]
    templates = {
        "circle": (x - 0.5) ** 2 + (y - 0.5) ** 2 <= 0.25,
        "square": np.ones_like(mask),
        "triangle": np.abs(x - 0.5) <= y / 2,  # apex at the top centre, base along the bottom
    }
    iou = {n: (t & mask).sum() / max((t | mask).sum(), 1) for n, t in templates.items()}
    return max(iou, key=iou.get)


def classify_motion(track: np.ndarray, scale: float = 1.0) -> str:
    """Motion of a centroid track ``(F, 2)``: the dominant axis of the net displacement, or still."""
    d = track[-1] - track[0]
    if np.abs(d).max() < STILL_PIXELS * scale:
        return "still"
    if abs(d[0]) >= abs(d[1]):
        return "right" if d[0] > 0 else "left"
    return "down" if d[1] > 0 else "up"


@dataclass
class VideoReport:
    """What the evaluator read from one video for one caption."""

    expected: tuple[shapes.ShapeObject, ...]
    found: dict = field(default_factory=dict)  # color -> (shape, motion)
    counts: list = field(default_factory=list)  # objects per frame
    areas: dict = field(default_factory=dict)  # color -> per-frame areas
    sides: dict = field(default_factory=dict)  # color -> median bounding-box side, pixels at 64x64
    tracks: dict = field(default_factory=dict)  # color -> [(frame index, centroid (x, y))]
    largest_step: dict = field(default_factory=dict)  # color -> largest step between frames, px at 64x64

    @property
    def count_ok(self) -> bool:
        return int(np.median(self.counts)) == len(self.expected)

    def per_object(self, attribute: str) -> list[bool]:
        result = []
        for obj in self.expected:
            got = self.found.get(obj.color)
            if attribute == "color":
                result.append(got is not None)
            elif attribute == "shape":
                result.append(got is not None and got[0] == obj.shape)
            else:
                result.append(got is not None and got[1] == obj.motion)
        return result


def read_video(
    frames: np.ndarray,
    caption: str,
    judged_frames: int = shapes.DIRECTION_HOLDS_FRAMES + 1,
    colors: dict | None = None,
) -> VideoReport:
    """Detect the caption's objects in ``(F, H, W, 3)`` uint8 frames (``colors``: as in :func:`detect`)."""
    expected = shapes.parse_caption(caption)
    scale = min(frames.shape[1:3]) / shapes.NATIVE_SIZE
    per_frame = [detect(f, colors) for f in frames]
    report = VideoReport(expected, counts=[len(d) for d in per_frame])
    for color in {d.color for ds in per_frame for d in ds}:
        track = [(i, d) for i, ds in enumerate(per_frame) for d in ds if d.color == color]
        if len(track) < len(frames) / 2:
            continue  # a flicker, not an object
        votes = [d.shape for _, d in track]
        early = np.array([d.centroid for i, d in track if i < judged_frames])
        motion = classify_motion(early, scale) if len(early) >= 2 else "still"
        report.found[color] = (max(set(votes), key=votes.count), motion)
        report.areas[color] = [d.area for _, d in track]
        report.sides[color] = float(np.median([d.side for _, d in track])) / scale
        report.tracks[color] = [(i, d.centroid) for i, d in track]
        steps = [np.linalg.norm(d1.centroid - d0.centroid) for (_, d0), (_, d1) in zip(track[:-1], track[1:])]
        report.largest_step[color] = max(steps, default=0.0) / scale
    return report


def misses(report: VideoReport) -> list[str]:
    """What the evaluator read wrong in one video, a line per object: missing, or the shape or motion it
    read instead, noting when that is the other object's motion (a binding failure) and when the
    object's track jumped (see ``JUMP_PIXELS``)."""
    lines = []
    for obj in report.expected:
        got = report.found.get(obj.color)
        if got is None:
            lines.append(f"{obj.color} {obj.shape}: missing")
            continue
        wrong = []
        if got[0] != obj.shape:
            wrong.append(f"shape {got[0]} (not {obj.shape})")
        if got[1] != obj.motion:
            whose = ", the other's" if got[1] in {o.motion for o in report.expected if o is not obj} else ""
            wrong.append(f"motion {got[1]} (not {obj.motion}{whose})")
        if wrong and report.largest_step[obj.color] > JUMP_PIXELS:
            wrong.append(f"track jumps {report.largest_step[obj.color]:.0f} px")
        if wrong:
            lines.append(f"{obj.color} {obj.shape}: " + ", ".join(wrong))
    return lines


def speed_of(track, scale: float = 1.0) -> float:
    """Median centroid displacement per frame (pixels at 64x64) between consecutive detected frames."""
    steps = [
        np.linalg.norm(c1 - c0) / scale for (i0, c0), (i1, c1) in zip(track[:-1], track[1:]) if i1 == i0 + 1
    ]
    return float(np.median(steps)) if steps else float("nan")


def score_windows(
    frames: np.ndarray,
    caption: str,
    window: int = shapes.NATIVE_FRAMES,
    stride: int = shapes.NATIVE_FRAMES - 1,
) -> list[dict]:
    """Score a long video window by window (``window`` frames every ``stride``), for drift over time.

    Per window: object count, color and shape accuracy (%, as :func:`summarize`); size stability (100 x
    (1 - relative std of each object's area)); speed (% of objects whose median speed fits the caption:
    1 to 3 px/frame when moving, the world's being 1.5 to 2.5 with bounces; under 0.5 when still); and
    the background brightness (the median pixel value, 0-255: objects cover a few percent of the frame,
    so it rises with over-exposure drift)."""
    scale = min(frames.shape[1:3]) / shapes.NATIVE_SIZE
    rows = []
    for start in range(0, len(frames) - window + 1, stride):
        clip = frames[start : start + window]
        report = read_video(clip, caption)
        speed_ok, size = [], []
        for obj in report.expected:
            track = report.tracks.get(obj.color)
            if track is None:
                speed_ok.append(False)
                continue
            v = speed_of(track, scale)
            speed_ok.append(bool(v < 0.5) if obj.motion == "still" else bool(1.0 <= v <= 3.0))
            areas = np.array(report.areas[obj.color])
            size.append(max(0.0, 1 - areas.std() / areas.mean()))
        rows.append(
            {
                "start": start,
                "count": 100.0 * report.count_ok,
                "color": 100.0 * float(np.mean(report.per_object("color"))),
                "shape": 100.0 * float(np.mean(report.per_object("shape"))),
                "size_stability": 100.0 * float(np.mean(size)) if size else 0.0,
                "speed": 100.0 * float(np.mean(speed_ok)),
                "background": float(np.median(clip)),
            }
        )
    return rows


def centroid_error(frames: np.ndarray, clip: shapes.Clip, frame_indices) -> float:
    """Mean distance in pixels between detected and true centres over ``frame_indices`` (a missing
    object counts as the frame's diagonal)."""
    errors = []
    diag = float(np.hypot(*frames.shape[1:3]))
    for i in frame_indices:
        found = {d.color: d.centroid for d in detect(frames[i])}
        for k, obj in enumerate(clip.objects):
            c = found.get(obj.color)
            errors.append(diag if c is None else float(np.linalg.norm(c - clip.centers[i, k])))
    return float(np.mean(errors))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def summarize(reports: list[VideoReport]) -> dict[str, float]:
    """Accuracies in percent: color, shape, direction (per object), object count (per video), and the
    temporal stability of count (fraction of frames with the right count) and size (1 - mean relative
    std of each object's area)."""

    def pct(values):
        return 100.0 * float(np.mean(values)) if values else 0.0

    flat = lambda attr: [ok for r in reports for ok in r.per_object(attr)]  # noqa: E731
    size_cv = [np.std(a) / max(np.mean(a), 1e-9) for r in reports for a in r.areas.values()]
    return {
        "color": pct(flat("color")),
        "shape": pct(flat("shape")),
        "direction": pct(flat("motion")),
        "count": pct([r.count_ok for r in reports]),
        "count_stability": pct([np.mean(np.array(r.counts) == len(r.expected)) for r in reports]),
        "size_stability": 100.0 * (1 - float(np.mean(size_cv))) if size_cv else 0.0,
    }


# --------------------------------------------------------------------------------------------------
# Generating and scoring a held-out evaluation set.
def evaluation_set(n: int) -> list[shapes.Clip]:
    """``n`` held-out clips: seeds from the evaluation-only range; half single-object captions, half
    two-object combinations that training never sees. Fixed: the same ``n`` gives the same set."""
    clips = []
    for i in range(n):
        rng = np.random.default_rng([shapes.EVAL_SEED_OFFSET + i, 1])
        objects = shapes.sample_objects(rng, num_objects=1 + i % 2, held_out=True)
        clips.append(shapes.render_clip(objects, shapes.EVAL_SEED_OFFSET + i))
    return clips


def evaluate(
    pipe,
    tasks=("t2v", "i2v", "predict", "interpolate"),
    n: int = 100,
    steps: int | None = None,
    seed: int | Sequence[int] = 0,
    guidance_scale: float | None = None,
    by_objects: bool = False,
    on_video=None,
):
    """Generate for the evaluation set with fixed seeds and score. Returns ``{task: {metric: value}}``.

    Clip ``i`` is generated from ``torch.Generator().manual_seed(seed + i)``. ``seed`` may be a sequence:
    every clip is then generated once per seed, the rows pool all of them, and a row ``"{task}, seed
    {s}"`` per seed shows the spread. One seed set of 100 clips moves by several points with the seed
    (a 150-object accuracy near 85% has a standard error of about 3 points).

    ``on_video(task, index, clip, report, seed)`` is called with each video's :class:`VideoReport`
    (``vidgen eval --misses`` prints what :func:`misses` finds in it).

    ``by_objects``: also score the single-object captions (every one seen in training, with new seeds)
    and the two-object captions (combinations training never sees) apart, as rows ``"{task}, 1 object"``
    and ``"{task}, 2 objects"``: the second is where attribute binding is tested.

    ``guidance_scale`` ``None``: the pipeline's own default (its folder's ``default_guidance_scale``)."""
    import torch

    from vidgen import VidGenImageToVideoPipeline, VidGenMaskedVideoPipeline

    seeds = [seed] if isinstance(seed, int) else list(seed)
    if not seeds or not all(isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"seed must be an int or a sequence of distinct ints; got {seed!r}")
    clips = evaluation_set(n)
    steps = steps or 30
    i2v, masked = VidGenImageToVideoPipeline.from_pipe(pipe), VidGenMaskedVideoPipeline.from_pipe(pipe)
    for p in (i2v, masked):
        p.set_progress_bar_config(disable=True)
    common = dict(
        num_inference_steps=steps, guidance_scale=guidance_scale, output_type="np", frame_rate=shapes.FPS
    )
    results = {}
    for task in tasks:
        reports, psnrs, errors, report_seeds = [], [], [], []
        for s, (i, clip) in itertools.product(seeds, enumerate(clips)):
            g = torch.Generator().manual_seed(s + i)
            if task == "t2v":
                video = pipe(prompt=clip.caption, generator=g, **common).frames[0]
            elif task == "i2v":
                video = i2v(image=clip.frames[0], prompt=clip.caption, generator=g, **common).frames[0]
            else:
                kwargs = (
                    dict(task="predict", given_frames=5)
                    if task == "predict"
                    else dict(task="interpolate", every=4)
                )
                video = masked(
                    video=clip.frames, prompt=clip.caption, generator=g, **kwargs, **common
                ).frames[0]
            frames = (np.clip(video, 0, 1) * 255).round().astype(np.uint8)
            reports.append(read_video(frames, clip.caption))
            report_seeds.append(s)
            if on_video is not None:
                on_video(task, i, clip, reports[-1], s)
            if task == "i2v":
                psnrs.append(psnr(frames[0], clip.frames[0]))
            if task == "predict":
                errors.append(centroid_error(frames, clip, range(5, len(frames))))
            if task == "interpolate":
                generated = [f for f in range(len(frames)) if f % 4]  # every 4th frame is given
                errors.append(centroid_error(frames, clip, generated))
        groups = {task: range(len(reports))}
        if by_objects:
            for k in (1, 2):
                groups[f"{task}, {k} object{'s' if k > 1 else ''}"] = [
                    i for i, r in enumerate(reports) if len(r.expected) == k
                ]
        if len(seeds) > 1:
            for s in seeds:
                groups[f"{task}, seed {s}"] = [i for i, rs in enumerate(report_seeds) if rs == s]
        for name, members in groups.items():
            scores = summarize([reports[i] for i in members])
            if psnrs:
                scores["first_frame_psnr_db"] = float(np.mean([psnrs[i] for i in members]))
            if errors:
                scores["centroid_error_px"] = float(np.mean([errors[i] for i in members]))
            results[name] = scores
    return results


def format_table(results: dict) -> str:
    metrics = sorted({m for scores in results.values() for m in scores})
    lines = ["| task | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for task, scores in results.items():
        cells = [f"{scores[m]:.1f}" if m in scores else "" for m in metrics]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
