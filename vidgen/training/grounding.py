"""Grounding losses for Shapes captions: which object each caption word and each latent token belongs
to, a phrase loss on the text encoder and a binding loss on the DiT's text cross-attention.

Used by ``scripts/train_default.py`` (``--text-grounding``, ``--attention-grounding``), by
``scripts/distill_turbo2k.py`` (``--attention-grounding``) and by ``vidgen train-lora``
(``train.binding_weight``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import shapes
from ..data.text import word_tokenizer
from ..eval import nearest_color
from ..models.transformer import VidGenTransformer3DModel

# What each word of a caption is grounded to: the object whose phrase it is in.
GROUNDING = {"color": tuple(shapes.COLORS), "shape": shapes.SHAPES, "motion": shapes.MOTIONS}


def phrase_targets(tokens: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` caption ids -> ``(B, L, 3)``: for every word of an object's phrase ("a red circle moves
    right"), the index of that object's color, shape and motion in ``GROUNDING``; -100 (ignored) on
    "and", ``</s>``, padding and captions that are not the world's (the empty one of caption dropout)."""
    return caption_phrases(tokens)[0]


def word_objects(tokens: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` caption ids -> ``(B, L)``: which object's phrase each word is in (0 or 1); -1 elsewhere."""
    return caption_phrases(tokens)[1]


def caption_phrases(tokens: torch.Tensor, tokenizer=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``phrase_targets`` and ``word_objects`` of ``(B, L)`` caption ids, in one pass over the words.
    ``tokenizer``: the one that made the ids (default: the Shapes word tokenizer)."""
    tokenizer = tokenizer or word_tokenizer()
    rows, inverse = torch.unique(tokens, dim=0, return_inverse=True)  # the cache repeats captions
    labels = torch.full((len(rows), tokens.shape[1], len(GROUNDING)), -100, dtype=torch.long)
    which = torch.full((len(rows), tokens.shape[1]), -1, dtype=torch.long)
    for r, ids in enumerate(rows):
        words = [w for w in tokenizer.convert_ids_to_tokens(ids.tolist()) if w not in ("<pad>", "</s>")]
        try:
            objects = shapes.parse_caption(" ".join(words))
        except ValueError:
            continue
        k = 0  # the object whose phrase this word is in
        for j, word in enumerate(words):
            if word == "and":
                k += 1
                continue
            o = objects[k]
            labels[r, j] = torch.tensor(  # -100 for values the world does not sample ("diagonally")
                [GROUNDING[a].index(v) if v in GROUNDING[a] else -100 for a, v in zip(GROUNDING, (o.color, o.shape, o.motion))]
            )  # fmt: skip
            which[r, j] = k
    return labels[inverse], which[inverse]


def grounding_loss(head: nn.Linear, text: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``head(text)`` (B, L, 15) against ``phrase_targets`` (B, L, 3), summed over the
    three attributes. It makes every word of a phrase carry its object's attributes, so that the DiT's
    cross-attention from an object's tokens to any word that names it (its color, its shape) also brings
    back how it moves: the jointly trained encoder alone spreads each motion over both objects' words."""
    logits = head(text).split([len(v) for v in GROUNDING.values()], dim=-1)
    count = (targets[..., 0] >= 0).sum().clamp(min=1)  # a batch of dropped captions gives 0, not NaN
    return (
        sum(
            F.cross_entropy(lg.flatten(0, 1), targets[..., i].flatten(), reduction="sum")
            for i, lg in enumerate(logits)
        )
        / count
    )


# Where each object's latent tokens look in the caption: the DiT's cross-attention.
def object_token_masks(num_clips: int, temporal: int, spatial: int) -> torch.Tensor:
    """``(n, 2, F, H, W)`` bool: the latent tokens each object of the cached clip ``sample_clip(i)``
    touches (``shapes.object_tokens`` of its own pixel mask); slot 1 is empty for one-object clips."""
    out = []
    for seed in range(num_clips):
        clip = shapes.sample_clip(seed)
        masks = shapes.render_masks(clip.objects, clip.centers, clip.radii, *clip.frames.shape[1:3])
        tokens = shapes.object_tokens(masks.transpose(1, 0, 2, 3), temporal, spatial)  # (K, F, H, W)
        out.append(torch.cat([tokens, torch.zeros_like(tokens[:1])])[:2])
    return torch.stack(out)


def token_owners(objects: torch.Tensor, temporal: int, spatial: int) -> torch.Tensor:
    """``(n, F*H*W)`` int8: the object each latent token of the cached clips ``sample_clip(0 .. n-1)``
    belongs to (0 or 1; -1 for the background and for tokens both objects touch), as ``binding_loss``
    reads it. ``objects``: the cache's ``(n, F, H, W)`` object tokens, checked against the clips."""
    per = object_token_masks(len(objects), temporal, spatial)  # (n, 2, F, H, W)
    if not torch.equal(per.any(1), objects.bool()):
        raise ValueError(
            f"the latent cache does not hold the clips shapes.sample_clip(0 .. {len(objects) - 1})"
        )
    return owner_of(per[:, 0], per[:, 1]).flatten(1)


def owner_of(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """int8 0 where only ``first`` (bool) holds, 1 where only ``second`` does, -1 where both or neither."""
    return torch.where(first & ~second, 0, torch.where(second & ~first, 1, -1)).to(torch.int8)


def owners_by_color(frames: np.ndarray, caption: str, temporal: int, spatial: int) -> torch.Tensor:
    """``token_owners`` of one clip read from its pixels rather than rendered: ``(F*H*W,)`` int8 on the
    latent grid of ``(F, H, W, 3)`` uint8 ``frames``. For a caption of two objects of different colors
    in the Shapes grammar, a pixel belongs to the object whose color is its nearest palette color
    (black, the background, included); a token to the object whose pixels it holds, -1 where it holds
    both or neither. Any other caption gives -1 everywhere (nothing to bind)."""
    F, H, W = (frames.shape[0] - 1) // temporal + 1, frames.shape[1] // spatial, frames.shape[2] // spatial
    nobody = torch.full((F * H * W,), -1, dtype=torch.int8)
    try:
        objects = shapes.parse_caption(caption)
    except ValueError:
        return nobody
    if len(objects) != 2 or objects[0].color == objects[1].color:
        return nobody
    nearest, names = nearest_color(frames, shapes.COLORS | shapes.NEW_COLORS)  # (F, H, W)
    masks = np.stack([nearest == names.index(o.color) for o in objects])  # (2, F, H, W)
    return owner_of(*shapes.object_tokens(masks, temporal, spatial)).flatten()  # (F' * H' * W',)


def binding_targets(words: torch.Tensor, owners: torch.Tensor, dropped: torch.Tensor):
    """A batch's ``binding_loss`` inputs: ``word_objects`` ``(B, T)`` and ``token_owners`` ``(B, N)`` with
    the dropped captions (``dropped``, ``(B,)`` bool) and one-object captions left out (-1): only two
    phrases give something to bind."""
    words = words.masked_fill(dropped[:, None], -1)  # (B, T)
    two = (words == 1).any(1, keepdim=True)  # (B, 1)
    return words, owners.long().masked_fill(~two, -1)  # (B, T), (B, N)


class CrossAttentionProbe:
    """Records the text cross-attention probabilities ``(B, heads, N, T)`` of chosen DiT blocks in every
    forward pass, with gradients: hooks keep the outputs of ``attn2.to_q`` and ``attn2.to_k``, and
    ``maps()`` normalises and scales them as the attention backend does (no text mask: training passes
    none)."""

    def __init__(self, dit: VidGenTransformer3DModel, blocks: list[int]):
        self.attns = [dit.transformer_blocks[b].attn2 for b in blocks]
        self.seen: dict[int, dict[str, torch.Tensor]] = {i: {} for i in range(len(blocks))}
        for i, attn in enumerate(self.attns):
            for name in ("to_q", "to_k"):
                getattr(attn, name).register_forward_hook(self._keep(i, name))

    def _keep(self, i: int, name: str):
        def hook(module, inputs, output):
            self.seen[i][name] = output

        return hook

    def maps(self) -> list[torch.Tensor]:
        out = []
        for i, attn in enumerate(self.attns):
            q = attn.norm_q(self.seen[i]["to_q"].unflatten(-1, (attn.heads, -1)))  # (B, N, H, Dh)
            k = attn.norm_k(self.seen[i]["to_k"].unflatten(-1, (attn.heads, -1)))  # (B, T, H, Dh)
            logits = torch.einsum("bnhd,bthd->bhnt", q, k) / q.shape[-1] ** 0.5
            out.append(logits.softmax(-1))  # (B, H, N, T)
        return out


def binding_loss(maps: list[torch.Tensor], words: torch.Tensor, tokens: torch.Tensor, weight: torch.Tensor):
    """How much of an object's cross-attention to the two objects' phrases goes to the *other* phrase.

    ``maps``: ``(B, H, N, T)`` probabilities per block; ``words``: ``(B, T)`` ``word_objects`` (0, 1, or
    -1); ``tokens``: ``(B, N)`` the object each latent token belongs to (0, 1, or -1: background, both,
    a one-object caption); ``weight``: ``(B, N)`` per-token weight. For a token of object k the loss is
    ``-log(p_k / (p_0 + p_1))``, ``p_j`` its attention mass on the words of phrase j (mean over heads
    and blocks): attention to "and", ``</s>`` or padding is free, only the wrong object's words cost.
    Trained on the flow loss alone, the tokens of the red object read the blue object's words too and
    then move as the blue one was told (the two-object direction errors of ``vidgen eval``)."""
    phrase = torch.stack([(words == j).float() for j in (0, 1)], dim=-1)  # (B, T, 2)
    w = weight * (tokens >= 0)  # (B, N)
    if not w.any():
        return maps[0].sum() * 0  # nothing to bind in this batch: 0 with a graph
    own = tokens.clamp(min=0)[:, None, :, None]  # (B, 1, N, 1)
    loss = 0
    for p in maps:
        mass = torch.einsum("bhnt,btj->bhnj", p, phrase) + 1e-6  # (B, H, N, 2)
        share = mass.gather(-1, own.expand(*mass.shape[:3], 1))[..., 0] / mass.sum(-1)  # (B, H, N)
        loss = loss + (-share.log().mean(1) * w).sum() / w.sum()
    return loss / len(maps)
