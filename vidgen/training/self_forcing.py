"""Building blocks of the causal-student recipes: ODE-pair initialisation, Self-Forcing (Huang et al.,
2025) and Self-Forcing++ (Cui et al., 2025) on vidgen's causal transformer.

- :func:`causal_student`: the bidirectional teacher's weights in a block-causal transformer.
- :func:`teacher_trajectory`: the teacher's guided ODE from noise, kept at the student's few-step levels.
- :func:`rollout`: the student's own chunk-by-chunk generation with its KV cache, as at inference,
  with stochastic gradient truncation: each chunk is denoised down to a randomly chosen exit step
  without gradients and only that step's clean prediction carries them; the cache is written by
  gradient-free context passes. Optional *backward noise initialisation* (Self-Forcing++): a chunk
  starts from the student's own clean frames noised to its exit level instead of from pure noise.
- :func:`dmd_loss` and :func:`critic_loss`: distribution matching distillation with the teacher as
  the real score (with guidance) and a trained critic as the fake score.
- :func:`load_pairs` and :func:`regression_loss`: the init's ODE pairs and its teacher-forced regression,
  which the DMD recipes can also add to the generator's loss (``--regression-pairs``), as the first DMD
  paper did against mode dropping.

Latents are ``(B, C, F, H, W)`` (normalised, as the pipelines' transformer sees them); timesteps are
per latent frame in ``[0, 1000]``; given frames sit at timestep 0 and carry no loss.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import extract_model_from_parallel
from safetensors import safe_open

from ..data import shapes
from ..models import KVCache, VidGenTransformer3DModel
from ..pipelines.common import DEFAULT_GUIDANCE_SCALE
from .checkpoint import (
    append_csv,
    load_latest_checkpoint,
    prefixed,
    save_checkpoint,
    save_model,
    unprefixed,
)
from .distributed import average_gradients


def pack(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)  # (B, C, F, H, W) -> (B, N, C)


def unpack(x: torch.Tensor, grid) -> torch.Tensor:
    return x.transpose(1, 2).unflatten(2, tuple(grid))  # (B, N, C) -> (B, C, F, H, W)


def causal_student(
    teacher: VidGenTransformer3DModel, chunk_size: int, independent_first_frame: bool = False
) -> VidGenTransformer3DModel:
    """A block-causal copy of ``teacher`` (same weights, ``causal_chunk_size=chunk_size``)."""
    config = {k: v for k, v in teacher.config.items() if not k.startswith("_")}
    config |= {"causal_chunk_size": chunk_size, "independent_first_frame": independent_first_frame}
    student = VidGenTransformer3DModel.from_config(config)
    student.load_state_dict(teacher.state_dict())
    return student


def bidirectional_copy(teacher: VidGenTransformer3DModel) -> VidGenTransformer3DModel:
    """A trainable copy of ``teacher``: the critic (fake score) starts as the real score."""
    config = {k: v for k, v in teacher.config.items() if not k.startswith("_")}
    critic = VidGenTransformer3DModel.from_config(config)
    critic.load_state_dict(teacher.state_dict())
    return critic


def training_captions(rng: np.random.Generator, n: int, two_object_share: float | None = None) -> list[str]:
    """Captions of the Shapes world's training distribution (never the held-out combinations): one or
    two objects with equal odds, or two with probability ``two_object_share`` when given."""
    if two_object_share is not None and not 0 <= two_object_share <= 1:
        raise ValueError(f"two_object_share must be in [0, 1]; got {two_object_share}")
    captions = []
    for _ in range(n):
        num_objects = None if two_object_share is None else 1 + int(rng.random() < two_object_share)
        captions.append(shapes.caption_of(shapes.sample_objects(rng, num_objects=num_objects)))
    return captions


@torch.no_grad()
def encode_text(pipe, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embeds (B, T, C), mask (B, T))`` from the pipeline's frozen text encoder."""
    length = min(128, getattr(pipe.tokenizer, "model_max_length", 128))
    return pipe._text_embeddings(captions, length, device, torch.float32)


def predict_x0(model, x: torch.Tensor, t: torch.Tensor, text, frame_offset: int = 0, **cache) -> torch.Tensor:
    """Clean-latent prediction ``x - sigma * v`` of ``x`` ``(B, C, F, H, W)`` at per-frame timesteps ``t`` ``(B, F)``."""
    embeds, mask = text
    _, _, F, H, W = x.shape
    v = model(pack(x), embeds, t, mask, F, H, W, frame_offset=frame_offset, **cache).sample  # (B, N, C)
    sigma = (t / 1000).repeat_interleave(H * W, dim=1)[..., None]  # (B, N, 1)
    return unpack(pack(x) - sigma * v, (F, H, W))


def guided_x0(model, x, t, text, uncond, guidance: float) -> torch.Tensor:
    """Classifier-free guided clean prediction (guidance is linear, so on ``x0`` as on ``v``)."""
    if guidance <= 1:
        return predict_x0(model, x, t, text)
    both = (torch.cat([uncond[0], text[0]]), torch.cat([uncond[1], text[1]]))
    x0_u, x0_c = predict_x0(model, torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
    return x0_u + guidance * (x0_c - x0_u)


def frame_timesteps(sigma: torch.Tensor, num_frames: int, given_frames: int = 0) -> torch.Tensor:
    """``(B,)`` noise levels -> per-frame timesteps ``(B, F)``, 0 on the first ``given_frames``."""
    t = (sigma[:, None] * 1000).expand(-1, num_frames).clone()
    t[:, :given_frames] = 0
    return t


@torch.no_grad()
def teacher_trajectory(
    teacher, noise: torch.Tensor, text, uncond, sigmas: list[float], guidance: float, substeps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's guided Euler ODE from ``noise`` (at sigma 1) to clean, with ``substeps`` steps
    between consecutive few-step levels. Returns the states at the levels ``(B, S, C, F, H, W)`` and the
    clean end ``(B, C, F, H, W)``: the student's ODE pairs."""
    levels = [*sigmas, 0.0]
    x, states = noise, []
    for i in range(len(sigmas)):
        states.append(x)
        for s, s_next in zip(*[np.linspace(levels[i], levels[i + 1], substeps + 1)[k:] for k in (0, 1)]):
            t = torch.full((len(x), x.shape[2]), 1000 * float(s))
            x0 = guided_x0(teacher, x, t, text, uncond, guidance)
            v = (x - x0) / float(s)  # the velocity the x0 prediction implies
            x = x + (float(s_next) - float(s)) * v
    return torch.stack(states, dim=1), x


def rollout(
    student,
    noise: torch.Tensor,
    text,
    sigmas: list[float],
    exit_steps: list[int],
    generator: torch.Generator,
    kv_cache_frames: int | None = None,
    cache: KVCache | None = None,
    frame_offset: int = 0,
    init: torch.Tensor | None = None,
    grad: bool = True,
) -> tuple[torch.Tensor, KVCache]:
    """The student generates ``noise.shape[2]`` latent frames chunk by chunk (its ``chunk_starts``), from
    ``frame_offset`` (a chunk start) on.

    Chunk ``k`` runs the few-step levels ``0 .. exit_steps[k]`` (re-noising in between) and keeps the
    clean prediction of its exit step, the only one computed with gradients (when ``grad``). With
    ``init`` (the student's own clean frames, backward noise initialisation), chunk ``k`` instead starts
    at level ``exit_steps[k]`` from ``init`` noised to it, so one step with gradients regenerates it.
    A context pass at timestep 0 then writes the chunk's clean keys and values into ``cache`` (a new
    rolling cache of ``kv_cache_frames`` when not given). Returns the clean latents and the cache.
    """
    B, _, F, H, W = noise.shape
    starts = student.chunk_starts(frame_offset + F)
    if frame_offset not in starts:
        raise ValueError(
            f"frame_offset must be a chunk start; got {frame_offset} (chunk starts {starts[:6]}...)"
        )
    bounds = [b - frame_offset for b in starts if b >= frame_offset]
    if cache is None:
        cache = KVCache(student.config.num_layers, max_frames=kv_cache_frames)
    outputs = []
    for k, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        offset, exit_step = frame_offset + s, exit_steps[k]
        first = 0
        x = noise[:, :, s:e]
        if init is not None:
            first, level = exit_step, sigmas[exit_step]
            x = (1 - level) * init[:, :, s:e] + level * x
        for i in range(first, exit_step + 1):
            t = torch.full((B, x.shape[2]), 1000 * sigmas[i], device=x.device)
            with torch.set_grad_enabled(grad and i == exit_step):
                x0 = predict_x0(student, x, t, text, offset, kv_cache=cache)
            if i < exit_step:  # drawn in token order, as the pipeline draws it
                eps = unpack(torch.randn(pack(x0).shape, generator=generator), x0.shape[2:]).to(x0)
                x = (1 - sigmas[i + 1]) * x0.detach() + sigmas[i + 1] * eps
        if e < F or frame_offset + e in student.chunk_starts(frame_offset + e + 1):  # whole chunks only
            with torch.no_grad():  # context pass: clean keys and values, no gradient through the cache
                predict_x0(
                    student,
                    x0.detach(),
                    torch.zeros_like(t),
                    text,
                    offset,
                    kv_cache=cache,
                    update_kv_cache=True,
                )
        outputs.append(x0)
    return torch.cat(outputs, dim=2), cache


def load_pairs(folder: Path) -> dict:
    """The ODE pairs of ``train_causal_init.py`` (``folder/shard_*.safetensors``): ``states``
    ``(N, S, C, F, H, W)`` (the teacher's ODE at the S few-step levels), ``clean`` ``(N, C, F, H, W)``
    and the ``captions``."""
    paths = sorted(Path(folder).glob("shard_*.safetensors"))
    if not paths:
        raise FileNotFoundError(f"no ODE pair shards (shard_*.safetensors) in {folder}")
    pairs = {"states": [], "clean": [], "captions": []}
    for path in paths:
        with safe_open(path, "pt") as f:
            pairs["captions"] += json.loads(f.metadata()["captions"])
            for key in ("states", "clean"):
                pairs[key].append(f.get_tensor(key))
    return {k: v if k == "captions" else torch.cat(v) for k, v in pairs.items()}


def regression_loss(
    student, pairs: dict, pipe, sigmas, g: torch.Generator, batch: int, device
) -> torch.Tensor:
    """One teacher-forced ODE regression batch: clean frames before chunk ``[k, e)``, the chunk at level ``i``;
    the MSE between the student's clean prediction of the chunk and the teacher's ODE end."""
    n, S, F = len(pairs["clean"]), len(sigmas), pairs["clean"].shape[2]
    bounds = extract_model_from_parallel(student).chunk_starts(F)  # the model inside a DDP wrapper
    idx = torch.randint(0, n, (batch,), generator=g)
    c = int(torch.randint(0, len(bounds) - 1, (1,), generator=g))
    k, e = bounds[c], bounds[c + 1]  # the chunk's frames
    i = int(torch.randint(0, S, (1,), generator=g))
    clean = pairs["clean"][idx].to(device)
    x = torch.cat([clean[:, :, :k], pairs["states"][idx, i][:, :, k:e].to(device)], dim=2)
    t = torch.zeros(batch, e, device=device)
    t[:, k:] = 1000 * sigmas[i]
    text = encode_text(pipe, [pairs["captions"][j] for j in idx], device)
    prediction = predict_x0(student, x, t, text)[:, :, k:]
    return (prediction - clean[:, :, k:e]).square().mean()


def dmd_loss(
    x_gen: torch.Tensor,
    teacher,
    critic,
    text,
    uncond,
    guidance: float,
    sample_sigma,
    generator: torch.Generator,
    given_frames: int = 0,
) -> tuple[torch.Tensor, dict]:
    """Distribution matching distillation (DMD2's generator loss as Self-Forcing uses it).

    ``x_gen`` ``(B, C, F, H, W)`` (with gradients) is noised to ``sigma = sample_sigma(u)``; the teacher's
    guided clean prediction is the real score, the critic's the fake one. The generator is pulled along
    ``(fake - real) / mean|x_gen - real|`` through ``0.5 * ||x_gen - sg(x_gen - grad)||^2``. The first
    ``given_frames`` stay clean (timestep 0, context for the teacher and critic) and carry no loss.
    """
    B, _, F, _, _ = x_gen.shape
    gen = x_gen.detach()
    with torch.no_grad():
        sigma = sample_sigma(torch.rand(B, generator=generator)).clamp(0.02, 0.98).to(gen)
        t = frame_timesteps(sigma, F, given_frames)
        noised = (1 - sigma.view(-1, 1, 1, 1, 1)) * gen + sigma.view(-1, 1, 1, 1, 1) * torch.randn(
            gen.shape, generator=generator
        ).to(gen)
        noised[:, :, :given_frames] = gen[:, :, :given_frames]
        real = guided_x0(teacher, noised, t, text, uncond, guidance)
        fake = predict_x0(critic, noised, t, text)
        gen_part = slice(given_frames, None)
        scale = (gen - real)[:, :, gen_part].abs().mean(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-6)
        grad = ((fake - real) / scale)[:, :, gen_part]
    target = (gen[:, :, gen_part] - grad).detach()
    loss = 0.5 * (x_gen[:, :, gen_part] - target).square().mean()
    return loss, {"dmd_grad_norm": float(grad.square().mean().sqrt()), "sigma": float(sigma.mean())}


def critic_loss(
    critic, x_gen: torch.Tensor, text, sample_sigma, generator: torch.Generator, given_frames: int = 0
) -> torch.Tensor:
    """Flow matching of the critic on the student's (detached) samples: it learns the fake score."""
    x = x_gen.detach()
    B, _, F, _, _ = x.shape
    sigma = sample_sigma(torch.rand(B, generator=generator)).clamp(0.02, 0.98).to(x)
    t = frame_timesteps(sigma, F, given_frames)
    noise = torch.randn(x.shape, generator=generator).to(x)
    s = sigma.view(-1, 1, 1, 1, 1)
    noised = (1 - s) * x + s * noise
    noised[:, :, :given_frames] = x[:, :, :given_frames]
    embeds, mask = text
    _, _, F, H, W = x.shape
    v = unpack(critic(pack(noised), embeds, t, mask, F, H, W).sample, (F, H, W))
    return (v - (noise - x))[:, :, given_frames:].square().mean()


# --------------------------------------------------------------------------------------------------
# What the two DMD recipes share: the models, their optimizers, resume and export.
class Distillation:
    """Teacher (frozen pipeline), causal student, critic, their Adam optimizers (``betas=(0, 0.999)`` as
    Self-Forcing), an EMA of the student, and resumable checkpoints under ``run/checkpoints``."""

    @staticmethod
    def add_arguments(p) -> None:
        """The command-line flags both DMD recipes take (besides ``--out`` and ``--student``)."""
        from .. import DEFAULT_MODEL

        p.add_argument(
            "--teacher", default=DEFAULT_MODEL, help="bidirectional pipeline folder (default: embedded)"
        )
        p.add_argument("--few-steps", type=int, default=4, help="denoising levels per chunk")
        p.add_argument("--steps", type=int, default=200, help="generator updates")
        p.add_argument("--critic-ratio", type=int, default=5, help="critic updates per generator update")
        p.add_argument("--batch", type=int, default=8)
        p.add_argument("--lr", type=float, default=1e-5, help="student learning rate")
        p.add_argument("--critic-lr", type=float, default=2e-5)
        p.add_argument(
            "--guidance",
            type=float,
            default=DEFAULT_GUIDANCE_SCALE,
            help="the teacher's guidance (real score; default: the pipelines' default)",
        )
        p.add_argument(
            "--critic-warmup", type=int, default=0,
            help="updates at the start in which only the critic learns (the student's rollouts), the student waits",
        )  # fmt: skip
        p.add_argument(
            "--regression-pairs", default=None,
            help="the init's ODE pair folder (<init run>/pairs): add its regression to the generator's loss",
        )  # fmt: skip
        p.add_argument("--regression-weight", type=float, default=1.0, help="weight of that regression term")
        p.add_argument("--ema", type=float, default=0.99)
        p.add_argument(
            "--ema-start", type=int, default=50, help="generator update from which the EMA averages"
        )
        p.add_argument(
            "--two-object-share", type=float, default=None,
            help="share of two-object training captions (default: the world's, one or two objects alike)",
        )  # fmt: skip
        p.add_argument("--checkpoint-every", type=int, default=25)
        p.add_argument("--seed", type=int, default=0)

    def __init__(self, args, run, accelerator):
        from .. import VidGenPipeline

        self.run, self.accelerator, device = run, accelerator, accelerator.device
        self.pipe = VidGenPipeline.from_pretrained(args.teacher).to(device)
        for frozen in (self.pipe.transformer, self.pipe.text_encoder):
            frozen.requires_grad_(False).eval()
        self.teacher = self.pipe.transformer
        self.grid = tuple(self.teacher.config.sample_size)  # the teacher's horizon (F, H, W), latent
        self.sigmas = self.pipe.scheduler.few_step_sigmas(args.few_steps, int(np.prod(self.grid))).tolist()
        self.student = VidGenTransformer3DModel.from_pretrained(args.student).to(device).train()
        if self.student.config.causal_chunk_size is None:
            raise ValueError(f"--student {args.student} is not causal (causal_chunk_size is None)")
        self.critic = bidirectional_copy(self.teacher).to(device).train().requires_grad_(True)
        self.student.requires_grad_(True)
        betas = (0.0, 0.999)
        self.opt_student = torch.optim.Adam(self.student.parameters(), lr=args.lr, betas=betas)
        self.opt_critic = torch.optim.Adam(self.critic.parameters(), lr=args.critic_lr, betas=betas)
        self.pairs = None
        if args.regression_pairs is not None:
            self.pairs = load_pairs(args.regression_pairs)
            S, shape = len(self.sigmas), tuple(self.pairs["clean"].shape[2:])
            if self.pairs["states"].shape[1] != S or shape != self.grid:
                raise ValueError(
                    f"--regression-pairs {args.regression_pairs} hold {self.pairs['states'].shape[1]} levels "
                    f"of {shape} latents; this run needs {S} levels (--few-steps) of {self.grid}"
                )
        self.ema = {k: v.detach().clone() for k, v in self.student.state_dict().items()}
        self.ema_decay, self.ema_start = args.ema, args.ema_start
        self.args = vars(args)
        self.start, tensors, state = load_latest_checkpoint(
            run / "checkpoints", {"student": self.opt_student, "critic": self.opt_critic}, self.args
        )
        if tensors is not None:
            self.student.load_state_dict(unprefixed("student", tensors))
            self.critic.load_state_dict(unprefixed("critic", tensors))
            self.ema = unprefixed("ema", tensors)
        # Not wrapped in DDP: a rollout calls the student several times before one backward; update()
        # averages the gradients over processes instead.
        self.student, self.critic = self.student.to(accelerator.device), self.critic.to(accelerator.device)
        self.opt_student, self.opt_critic = accelerator.prepare(self.opt_student, self.opt_critic)

    def text(self, captions: list[str]):
        """Conditional and empty-prompt text for a batch of captions."""
        device = self.accelerator.device
        return encode_text(self.pipe, captions, device), encode_text(self.pipe, [""] * len(captions), device)

    def sample_sigma(self, u: torch.Tensor) -> torch.Tensor:
        """Noise levels shifted as the teacher was trained (and samples)."""
        return self.pipe.scheduler.training_sigmas(u, int(np.prod(self.grid)))

    def update(self, which: str, loss: torch.Tensor) -> None:
        model, opt = (
            (self.student, self.opt_student) if which == "student" else (self.critic, self.opt_critic)
        )
        opt.zero_grad()
        self.accelerator.backward(loss)
        average_gradients(self.accelerator, model.parameters())
        self.accelerator.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    def warming_up(self, step: int) -> bool:
        """Whether ``step`` is one of the critic's warm-up updates (``--critic-warmup``), in which the
        student does not move and the critic, a copy of the teacher at first, learns the student's rollouts."""
        return step < self.args["critic_warmup"]

    def update_student(self, step: int, loss_g: torch.Tensor, stats: dict, g: torch.Generator) -> dict:
        """The generator's update on the DMD loss ``loss_g`` (plus ``--regression-weight`` times the init's
        ODE regression with ``--regression-pairs``), then the EMA; returns the log's DMD columns."""
        loss, regression = loss_g, float("nan")
        if self.pairs is not None:
            device = self.accelerator.device
            r = regression_loss(
                self.student, self.pairs, self.pipe, self.sigmas, g, self.args["batch"], device
            )
            loss, regression = loss_g + self.args["regression_weight"] * r, r.item()
        self.update("student", loss)
        self.update_ema(step)
        return {"dmd": loss_g.item(), **stats, "regression": regression}

    NO_DMD = {
        "dmd": float("nan"),
        "dmd_grad_norm": float("nan"),
        "sigma": float("nan"),
        "regression": float("nan"),
    }

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        step -= self.args["critic_warmup"]  # counted in the student's own updates
        decay = self.ema_decay if step >= self.ema_start else 0.0
        for k, v in self.accelerator.unwrap_model(self.student).state_dict().items():
            self.ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)

    def save(self, step: int) -> None:
        if not self.accelerator.is_main_process:
            return
        unwrap = self.accelerator.unwrap_model
        tensors = prefixed("student", unwrap(self.student)) | prefixed("critic", unwrap(self.critic))
        tensors |= {f"ema.{k}": v for k, v in self.ema.items()}
        optimizers = {"student": self.opt_student, "critic": self.opt_critic}
        save_checkpoint(self.run / "checkpoints", step, tensors, optimizers, {"args": self.args})

    def end_step(self, step: int, row: dict) -> None:
        """Log ``row`` (CSV and one printed line) and checkpoint every ``--checkpoint-every`` updates."""
        append_csv(self.run / "log.csv", row)
        print(
            " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
            flush=True,
        )
        if (step + 1) % self.args["checkpoint_every"] == 0:
            self.save(step + 1)

    def export(self) -> None:
        """The EMA student as ``run/transformer_causal``."""
        if not self.accelerator.is_main_process:
            return
        student = self.accelerator.unwrap_model(self.student)
        student.load_state_dict(self.ema)
        save_model(student.eval(), self.run / "transformer_causal")
        print(f"wrote {self.run / 'transformer_causal'}")
