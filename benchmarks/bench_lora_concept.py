"""Teach the embedded default model a color the Shapes world never shows, orange (255, 140, 0), with a LoRA.

    python benchmarks/bench_lora_concept.py --out runs/lora-orange

1. Data: at most 50 clips rendered by the Shapes world with an orange object ("an orange circle moves
   right"; half of them with a second, ordinary object), written as mp4 + same-stem .txt captions.
   The default tokenizer has no word "orange": the word reaches the model as <unk>, so the LoRA has
   to learn what the unknown word means from the videos alone.
2. Training: ``vidgen train-lora`` (the real command, cache included), timed.
3. Evaluation, with and without the LoRA, fixed seeds:
   - held-out prompts that name orange (captions never used in training, new seeds): how often the
     evaluator, its palette extended with orange, finds the orange object;
   - the held-out Shapes evaluation set (prompts without the new word): color, shape, direction and
     count accuracy, which the LoRA should leave within 5 points.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch

from vidgen import DEFAULT_MODEL, VidGenPipeline
from vidgen.data import shapes
from vidgen.eval import evaluation_set, read_video, summarize
from vidgen.training.train_lora import main as train_lora
from vidgen.video_io import export_to_video

CONCEPT = "orange"
ALL_COLORS = shapes.COLORS | shapes.NEW_COLORS
SEED_BASE = 50_000_000  # clips of the concept: rendering seeds far from the world's training range


def concept_objects():
    """Single-object orange captions: two thirds for training, one third held out for evaluation."""
    singles = [shapes.ShapeObject(CONCEPT, s, m) for s, m in itertools.product(shapes.SHAPES, shapes.MOTIONS)]
    held_out = [o for i, o in enumerate(singles) if i % 3 == 2]
    return [o for o in singles if o not in held_out], held_out


def with_companion(obj, rng):
    others = shapes.all_single_objects()
    return (obj, others[rng.integers(len(others))])


def training_clips(n: int) -> list[shapes.Clip]:
    trained, _ = concept_objects()
    rng = np.random.default_rng(7)
    clips = []
    for i in range(n):
        obj = trained[i % len(trained)]
        objects = (obj,) if i % 2 == 0 else with_companion(obj, rng)
        clips.append(shapes.render_clip(objects, SEED_BASE + i))
    return clips


def evaluation_prompts(n: int, training_captions: set[str]) -> list[str]:
    """Held-out single-object captions and two-object captions not in training, alternately."""
    _, held_out = concept_objects()
    rng = np.random.default_rng(11)
    trained, _ = concept_objects()
    prompts = []
    while len(prompts) < n:
        if len(prompts) % 2 == 0:
            prompts.append(held_out[len(prompts) // 2 % len(held_out)].caption)
        else:
            caption = shapes.caption_of(with_companion(trained[rng.integers(len(trained))], rng))
            if caption not in training_captions:
                prompts.append(caption)
    return prompts


def generate(pipe, prompts, steps, seed_base):
    videos = []
    for i, prompt in enumerate(prompts):
        video = pipe(prompt=prompt, num_inference_steps=steps, output_type="np", frame_rate=shapes.FPS,
                     generator=torch.Generator().manual_seed(seed_base + i)).frames[0]  # fmt: skip
        videos.append((np.clip(video, 0, 1) * 255).round().astype(np.uint8))
    return videos


def concept_found(videos, prompts) -> float:
    hits = [
        read_video(v, p, colors=ALL_COLORS).found.get(CONCEPT) is not None for v, p in zip(videos, prompts)
    ]
    return 100.0 * float(np.mean(hits))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--clips", type=int, default=50)
    p.add_argument("--steps", type=int, default=400, help="LoRA training steps")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--eval-concept", type=int, default=40, help="held-out prompts naming orange")
    p.add_argument("--eval-standard", type=int, default=100, help="held-out Shapes prompts")
    p.add_argument("--sample-steps", type=int, default=30)
    args = p.parse_args()
    out = Path(args.out)

    # 1. Data.
    data = out / "data"
    clips = training_clips(args.clips)
    if not data.exists():
        data.mkdir(parents=True)
        for i, clip in enumerate(clips):
            export_to_video(clip.frames, data / f"clip_{i:03d}.mp4", fps=shapes.FPS)
            (data / f"clip_{i:03d}.txt").write_text(clip.caption + "\n")

    # 2. Training, timed (cache included).
    lora_dir = out / "lora"
    tic = time.time()
    train_lora([
        "--output_dir", str(lora_dir), "--data.path", str(data), "--data.buckets", "[17x64x64]",
        "--train.max_steps", str(args.steps), "--train.batch_size", str(args.batch),
        "--train.learning_rate", str(args.lr), "--lora.rank", str(args.rank), "--lora.alpha", str(args.rank),
        "--train.lr_scheduler", "cosine", "--train.lr_warmup_steps", "20", "--train.first_frame_p", "0.15",
        "--checkpoints.every", "100", "--logging.every", "25",
        "--validation.prompts", "[an orange circle moves right]", "--validation.num_inference_steps", "20",
    ])  # fmt: skip
    train_minutes = (time.time() - tic) / 60

    # 3. Evaluation with and without the LoRA.
    prompts = evaluation_prompts(args.eval_concept, {c.caption for c in clips})
    standard = [c.caption for c in evaluation_set(args.eval_standard)]
    pipe = VidGenPipeline.from_pretrained(DEFAULT_MODEL)
    pipe.set_progress_bar_config(disable=True)
    rows = {}
    for name in ("base", "lora"):
        if name == "lora":
            pipe.load_lora_weights(lora_dir, adapter_name=CONCEPT)
        tic = time.time()
        concept_videos = generate(pipe, prompts, args.sample_steps, 0)
        standard_videos = generate(pipe, standard, args.sample_steps, 0)
        scores = summarize([read_video(v, c) for v, c in zip(standard_videos, standard)])
        rows[name] = {"orange found": concept_found(concept_videos, prompts), **scores,
                      "s/video": (time.time() - tic) / (len(prompts) + len(standard))}  # fmt: skip

    print(f"\nLoRA: {args.clips} clips, {args.steps} steps x batch {args.batch}, rank {args.rank}: "
          f"{train_minutes:.1f} min (cache + training) on {torch.get_num_threads()} CPU threads")  # fmt: skip
    print(f"held-out prompts naming orange: {len(prompts)}; standard held-out prompts: {len(standard)}\n")
    metrics = ["orange found", "color", "shape", "direction", "count", "s/video"]
    print("| model | " + " | ".join(metrics) + " |")
    print("|---" * (len(metrics) + 1) + "|")
    for name, scores in rows.items():
        print(f"| {name} | " + " | ".join(f"{scores[m]:.1f}" for m in metrics) + " |")
    delta = {m: rows["lora"][m] - rows["base"][m] for m in ("color", "shape", "direction", "count")}
    print("\nchange on prompts without the new word: " + ", ".join(f"{m} {d:+.1f}" for m, d in delta.items()))


if __name__ == "__main__":
    main()
