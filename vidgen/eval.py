"""The Shapes-world evaluator: reads videos and scores them against captions and ground-truth physics.

Detection is by color: every foreground pixel takes the nearest palette color, and each color with
enough pixels is one object (a clip's objects have distinct colors). Per object and frame it measures
area, centroid and bounding box; the shape comes from the fill ratio of the bounding box (square ~1,
circle ~pi/4, triangle ~1/2, with the triangle widening downwards) and the motion from the centroid
track over the first frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .data import shapes

FOREGROUND_THRESHOLD = 60  # a pixel is foreground if its brightest channel exceeds this
MIN_AREA = 12  # pixels at 64x64; smaller blobs are noise
STILL_PIXELS = 2.0  # total centroid travel over the judged frames below this (at 64x64) is "still"


@dataclass
class Detection:
    color: str
    area: float
    centroid: np.ndarray  # (x, y) pixels: the bounding-box centre, which is the world's object centre
    fill: float  # area / bounding-box area
    widens_down: bool


def detect(frame: np.ndarray) -> list[Detection]:
    """Objects in one ``(H, W, 3)`` uint8 frame."""
    H, W, _ = frame.shape
    scale = min(H, W) / shapes.NATIVE_SIZE
    palette = np.array(list(shapes.COLORS.values()), float)
    names = list(shapes.COLORS)
    fg = frame.max(-1) > FOREGROUND_THRESHOLD
    if not fg.any():
        return []
    pix = frame[fg].astype(float)
    nearest = ((pix[:, None] - palette[None]) ** 2).sum(-1).argmin(1)
    ys, xs = np.nonzero(fg)
    out = []
    for k in np.unique(nearest):
        sel = nearest == k
        if sel.sum() < MIN_AREA * scale**2:
            continue
        x, y = xs[sel], ys[sel]
        box = (x.max() - x.min() + 1) * (y.max() - y.min() + 1)
        top, bottom = y < np.median(y), y > np.median(y)
        widths = [np.ptp(x[m]) if m.any() else 0 for m in (top, bottom)]
        center = np.array([(x.min() + x.max() + 1) / 2, (y.min() + y.max() + 1) / 2])  # the bounding box's
        out.append(Detection(names[k], float(sel.sum()), center, sel.sum() / box, widths[1] > widths[0] + 1))
    return out


def classify_shape(fill: float, widens_down: bool) -> str:
    if fill > 0.9:
        return "square"
    if fill < 0.66 or (fill < 0.72 and widens_down):
        return "triangle"
    return "circle"


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
    frames: np.ndarray, caption: str, judged_frames: int = shapes.DIRECTION_HOLDS_FRAMES + 1
) -> VideoReport:
    """Detect the caption's objects in ``(F, H, W, 3)`` uint8 frames."""
    expected = shapes.parse_caption(caption)
    scale = min(frames.shape[1:3]) / shapes.NATIVE_SIZE
    per_frame = [detect(f) for f in frames]
    report = VideoReport(expected, counts=[len(d) for d in per_frame])
    for color in {d.color for ds in per_frame for d in ds}:
        track = [(i, d) for i, ds in enumerate(per_frame) for d in ds if d.color == color]
        if len(track) < len(frames) / 2:
            continue  # a flicker, not an object
        fills = np.median([d.fill for _, d in track])
        widens = np.mean([d.widens_down for _, d in track]) > 0.5
        early = np.array([d.centroid for i, d in track if i < judged_frames])
        motion = classify_motion(early, scale) if len(early) >= 2 else "still"
        report.found[color] = (classify_shape(fills, widens), motion)
        report.areas[color] = [d.area for _, d in track]
    return report


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
    seed: int = 0,
):
    """Generate for the evaluation set with fixed seeds and score. Returns ``{task: {metric: value}}``."""
    import torch

    from vidgen import VidGenImageToVideoPipeline, VidGenMaskedVideoPipeline

    clips = evaluation_set(n)
    steps = steps or 30
    common = dict(num_inference_steps=steps, output_type="np", frame_rate=shapes.FPS)
    results = {}
    for task in tasks:
        reports, psnrs, errors = [], [], []
        for i, clip in enumerate(clips):
            g = torch.Generator().manual_seed(seed + i)
            if task == "t2v":
                video = pipe(prompt=clip.caption, generator=g, **common).frames[0]
            elif task == "i2v":
                i2v = VidGenImageToVideoPipeline.from_pipe(pipe)
                video = i2v(image=clip.frames[0], prompt=clip.caption, generator=g, **common).frames[0]
            else:
                masked = VidGenMaskedVideoPipeline.from_pipe(pipe)
                kwargs = (
                    dict(task="predict", given_frames=5)
                    if task == "predict"
                    else dict(task="interpolate", every=2)
                )
                video = masked(
                    video=clip.frames, prompt=clip.caption, generator=g, **kwargs, **common
                ).frames[0]
            frames = (np.clip(video, 0, 1) * 255).round().astype(np.uint8)
            reports.append(read_video(frames, clip.caption))
            if task == "i2v":
                psnrs.append(psnr(frames[0], clip.frames[0]))
            if task == "predict":
                errors.append(centroid_error(frames, clip, range(5, len(frames))))
            if task == "interpolate":
                generated = [f for f in range(len(frames)) if (f + 3) // 4 % 2 == 1]  # latent frames 1, 3
                errors.append(centroid_error(frames, clip, generated))
        scores = summarize(reports)
        if psnrs:
            scores["first_frame_psnr_db"] = float(np.mean(psnrs))
        if errors:
            scores["centroid_error_px"] = float(np.mean(errors))
        results[task] = scores
    return results


def format_table(results: dict) -> str:
    metrics = sorted({m for scores in results.values() for m in scores})
    lines = ["| task | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for task, scores in results.items():
        cells = [f"{scores[m]:.1f}" if m in scores else "" for m in metrics]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
