"""Long videos: the bidirectional teacher extended by sliding windows against causal students, scored
on every 17-frame window over time, plus streaming speed.

    python benchmarks/bench_long_video.py \\
        --student init=runs/causal_init/transformer_causal --student self-forcing=runs/sf/transformer_causal \\
        --student self-forcing++=runs/sfpp/transformer_causal [--streaming-vae runs/stream_vae/vae] \\
        [--num 20] [--lengths 161,337] [--results benchmarks/RESULTS.md]

Methods:
- ``teacher-sliding``: the bidirectional default model generates 17 frames, then repeatedly predicts the
  next 12 from the last 5 (its VDT prediction task), the naive way to extend a short-horizon model;
- each ``--student NAME=FOLDER``: a causal transformer rolled out by ``VidGenAutoregressivePipeline``
  (4 steps, no guidance, the rolling cache of the training horizon or ``--kv-cache-frames``), decoding
  with ``--streaming-vae`` when given (the fast decoder the embedded default ships as ``vae_streaming``);
  with ``--teacher-opening N`` the bidirectional model makes each video's first N frames and the student
  extends them.

Prints, for each length, a table of every window's mean scores (held-out captions, fixed seeds), the
speed table (streaming throughput and latency to the first frames on this machine), and with
``--results`` writes both tables and a PNG plot (count and color accuracy over time) into that
Markdown file, replacing its previous long-video section (the plot needs matplotlib: ``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from bench_streaming import opening_speed, stream_speed  # benchmarks/bench_streaming.py
from results_md import write_section  # benchmarks/results_md.py
from transformers import T5EncoderModel

from vidgen import (
    DEFAULT_MODEL,
    VidGenAutoregressivePipeline,
    VidGenMaskedVideoPipeline,
    VidGenPipeline,
    VidGenTransformer3DModel,
    VidGenVideoAutoencoder,
)
from vidgen.data import shapes
from vidgen.eval import evaluation_set, score_windows
from vidgen.pipelines.common import DEFAULT_GUIDANCE_SCALE

METRICS = ("count", "color", "shape", "size_stability", "speed", "background")


def to_uint8(video: np.ndarray) -> np.ndarray:
    return (np.clip(video, 0, 1) * 255).round().astype(np.uint8)


def teacher_sliding(pipe, masked, caption, num_frames, seed, steps, given=5):
    """17 frames from text, then windows of 17 that keep the last ``given`` frames and predict the rest."""
    g = torch.Generator().manual_seed(seed)
    common = dict(prompt=caption, num_inference_steps=steps, output_type="np", frame_rate=shapes.FPS)
    video = pipe(generator=g, **common).frames[0]  # (17, H, W, 3)
    while len(video) < num_frames:
        window = np.zeros_like(video[:17])
        window[:given] = video[-given:]
        out = masked(video=window, task="predict", given_frames=given, generator=g, **common).frames[0]
        video = np.concatenate([video, out[given:]])
    return video[:num_frames]


def causal(pipe, caption, num_frames, seed, kv_cache_frames=None, teacher=None, opening_frames=0):
    """The student's rollout; with ``opening_frames``, ``teacher`` (the bidirectional pipeline, its default
    steps and guidance) lays down the first frames and the student extends them."""
    video = None
    if opening_frames:
        g = torch.Generator().manual_seed(seed)
        video = list(teacher(caption, generator=g, output_type="np", frame_rate=shapes.FPS).frames[0][:opening_frames])
    g = torch.Generator().manual_seed(seed)
    common = dict(num_frames=num_frames, generator=g, output_type="np", frame_rate=shapes.FPS)
    return pipe(caption, video=video, kv_cache_frames=kv_cache_frames, **common).frames[0]


def window_table(results: dict, length: int) -> str:
    """Per method and window: the mean of each metric over the videos."""
    lines = [
        f"Length {length} frames: mean over videos per 17-frame window (start frame); "
        "count/color/shape/size/speed in %, background 0-255",
        "",
        "| method | window start | " + " | ".join(METRICS) + " |",
        "|---" * (len(METRICS) + 2) + "|",
    ]
    for method, rows in results.items():
        for w, start in enumerate(rows[0]):
            cells = [f"{np.mean([video[w][m] for video in rows]):.1f}" for m in METRICS]
            lines.append(f"| {method} | {start['start']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(all_results: dict, two_objects: list[bool]) -> str:
    """Per length and method: the first and the last window, and the worst window's count and color; the
    count over the two-object captions alone (``two_objects[i]``: video ``i`` has two), where it is lost."""
    lines = [
        "| length | method | count first / last / worst | color first / last / worst | "
        "two objects: count first / last / worst | background last |",
        "|---|---|---|---|---|---|",
    ]
    for length, results in all_results.items():
        for method, rows in results.items():
            windows = range(len(rows[0]))
            count = [np.mean([v[w]["count"] for v in rows]) for w in windows]
            color = [np.mean([v[w]["color"] for v in rows]) for w in windows]
            pairs = [np.mean([v[w]["count"] for v, two in zip(rows, two_objects) if two]) for w in windows]
            background = np.mean([v[-1]["background"] for v in rows])
            lines.append(
                f"| {length} | {method} | {count[0]:.0f} / {count[-1]:.0f} / {min(count):.0f} | "
                f"{color[0]:.0f} / {color[-1]:.0f} / {min(color):.0f} | "
                f"{pairs[0]:.0f} / {pairs[-1]:.0f} / {min(pairs):.0f} | {background:.1f} |"
            )
    n, n_two = len(two_objects), sum(two_objects)
    lines += [
        "",
        f"{n} videos per row, {n_two} with two objects: one video moves a window's count by {100 / n:.1f} "
        f"points ({100 / max(n_two, 1):.1f} in the two-object column); the same captions at other seeds can "
        "move it by several videos: tell methods apart on several seed sets.",
    ]
    return "\n".join(lines)


def speed_table(
    pipe, masked, students: dict, teacher_steps: int, length: int, kv_cache_frames=None, opening_frames=0
) -> str:
    """Streaming throughput and latency to the first frames, one video each, after a warm-up; with
    ``opening_frames``, also each student after the teacher's opening (its time counted in both)."""
    caption = "a red circle moves right"
    lines = [
        f"| method | video | frames/s | latency to first frames (s) | threads: {torch.get_num_threads()} |",
        "|---|---|---|---|---|",
    ]
    pipe(caption, num_inference_steps=2, output_type="np")  # warm-up
    tic = time.perf_counter()
    pipe(caption, num_inference_steps=teacher_steps, output_type="np", generator=torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - tic
    n = pipe.default_video_size[0]
    teacher = f"teacher ({teacher_steps} steps, guidance {DEFAULT_GUIDANCE_SCALE:g})"
    lines.append(f"| {teacher} | {n} frames | {n / seconds:.1f} | {seconds:.2f} |  |")
    tic = time.perf_counter()
    teacher_sliding(pipe, masked, caption, length, 0, teacher_steps)
    seconds = time.perf_counter() - tic
    lines.append(f"| teacher-sliding ({teacher_steps} steps) | {length} frames | {length / seconds:.1f} | (17 frames first) |  |")
    for name, ar in students.items():
        list(ar.stream(caption, num_frames=17))  # warm-up
        frames_per_second, first = stream_speed(ar, caption, length, kv_cache_frames=kv_cache_frames)
        lines.append(f"| {name} (4 steps, streaming) | {length} frames | {frames_per_second:.1f} | {first:.3f} |  |")
        if opening_frames:
            fps, first, _ = opening_speed(ar, pipe, caption, length, opening_frames, kv_cache_frames=kv_cache_frames)
            lines.append(
                f"| {name} after the teacher's first {opening_frames} frames | {length} frames | {fps:.1f} | {first:.3f} |  |"
            )
    return "\n".join(lines)


def plot(all_results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    length = max(all_results)
    results = all_results[length]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, metric in zip(axes, ("count", "color", "background")):
        for method, rows in results.items():
            starts = [w["start"] for w in rows[0]]
            ax.plot(starts, [np.mean([v[w][metric] for v in rows]) for w in range(len(starts))], marker="o", label=method)
        ax.set_xlabel("window start (frame)")
        ax.set_title(f"{metric} ({'%' if metric != 'background' else '0-255'}), {length} frames")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="the bidirectional teacher's pipeline folder")
    p.add_argument("--student", action="append", default=[], help="NAME=FOLDER of a causal transformer")
    p.add_argument("--num", type=int, default=20, help="held-out captions per length")
    p.add_argument("--lengths", default="161,337")
    p.add_argument(
        "--streaming-vae", default=None, help="VAE folder the students decode with (default: the teacher's)"
    )
    p.add_argument(
        "--student-text-encoder", default=None,
        help="text encoder folder the students were distilled with (default: the teacher's; the embedded "
        "model keeps its students' in text_encoder_causal/)",
    )  # fmt: skip
    p.add_argument("--teacher-steps", type=int, default=30)
    p.add_argument(
        "--seed", type=int, default=0,
        help="generator seed of the first caption's video (caption i uses this + i): other seed sets tell "
        "apart methods that one set leaves a video or two apart",
    )  # fmt: skip
    p.add_argument("--skip-teacher", action="store_true", help="students only")
    p.add_argument(
        "--kv-cache-frames", type=int, default=None,
        help="latent frames the students' rolling cache keeps (default: the pipeline's, the horizon minus a chunk)",
    )  # fmt: skip
    p.add_argument(
        "--teacher-opening", type=int, default=0, metavar="FRAMES",
        help="the bidirectional model makes each student video's first FRAMES frames (whole chunks: 4k + 1, "
        "at most its length) and the student extends them (default 0: the student alone)",
    )  # fmt: skip
    p.add_argument("--results", default=None, help="Markdown file to write the tables and plot into")
    args = p.parse_args()
    if args.kv_cache_frames is not None and args.kv_cache_frames < 1:
        p.error(f"--kv-cache-frames must be >= 1; got {args.kv_cache_frames}")

    pipe = VidGenPipeline.from_pretrained(args.model)
    t, length = pipe.vae_temporal_compression_ratio, pipe.default_video_size[0]
    if args.teacher_opening and ((args.teacher_opening - 1) % t or args.teacher_opening > length):
        p.error(f"--teacher-opening must be k * {t} + 1 frames, at most the teacher's {length}; got {args.teacher_opening}")
    masked = VidGenMaskedVideoPipeline.from_pipe(pipe)
    students = {}
    student_vae = VidGenVideoAutoencoder.from_pretrained(args.streaming_vae) if args.streaming_vae else pipe.vae
    student_text = pipe.text_encoder
    if args.student_text_encoder:
        student_text = T5EncoderModel.from_pretrained(args.student_text_encoder).eval()
    for spec in args.student:
        name, _, folder = spec.partition("=")
        if not folder:
            raise SystemExit(f"--student must be NAME=FOLDER; got {spec!r}")
        causal_transformer = VidGenTransformer3DModel.from_pretrained(folder)
        students[name] = VidGenAutoregressivePipeline.from_pipe(
            pipe, transformer=causal_transformer, vae=student_vae, text_encoder=student_text
        )
    for p_ in (pipe, masked, *students.values()):
        p_.set_progress_bar_config(disable=True)

    clips = evaluation_set(args.num)
    all_results = {}
    for length in [int(x) for x in args.lengths.split(",")]:
        results = {}
        methods = ({} if args.skip_teacher else {"teacher-sliding": None}) | students
        for method, ar in methods.items():
            tic = time.time()
            rows = []
            for i, clip in enumerate(clips):
                if ar is None:
                    video = teacher_sliding(pipe, masked, clip.caption, length, args.seed + i, args.teacher_steps)
                else:
                    video = causal(
                        ar, clip.caption, length, args.seed + i, args.kv_cache_frames, pipe, args.teacher_opening
                    )
                rows.append(score_windows(to_uint8(video), clip.caption))
            results[method] = rows
            print(f"{length} frames, {method}: {time.time() - tic:.0f}s", flush=True)
        all_results[length] = results
        print("\n" + window_table(results, length) + "\n", flush=True)

    summary = summary_table(all_results, [len(clip.objects) == 2 for clip in clips])
    speed = speed_table(
        pipe, masked, students, args.teacher_steps, max(all_results), args.kv_cache_frames, args.teacher_opening
    )
    print(f"generator seeds {args.seed}..{args.seed + len(clips) - 1}\n" + summary + "\n\n" + speed)
    if args.results:
        results_path = Path(args.results)
        results_path.parent.mkdir(parents=True, exist_ok=True)
        png = results_path.with_name("long_video.png")
        plot(all_results, png)
        options = "".join(
            f" --{flag} {value}"
            for flag, value in (("kv-cache-frames", args.kv_cache_frames), ("teacher-opening", args.teacher_opening))
            if value
        )
        text = "\n\n".join(
            [
                "## Long videos: teacher by sliding windows vs causal students",
                f"`python benchmarks/bench_long_video.py --num {args.num} --lengths {args.lengths}{options} ...` "
                f"({len(clips)} held-out captions, seeds {args.seed}..{args.seed + len(clips) - 1}).",
                summary,
                f"![count, color and background brightness over time]({png.name})",
                "Streaming speed:",
                speed,
                *[window_table(r, n) for n, r in all_results.items()],
            ]
        )
        write_section(results_path, "bench_long_video", text)
        print(f"wrote {results_path} and {png}")


if __name__ == "__main__":
    main()
