"""Grounding of Shapes captions: each word's object and attributes, each latent token's object, the
phrase loss on the text encoder and the binding loss on the DiT's cross-attention."""

import numpy as np
import torch

from vidgen.data import shapes
from vidgen.data.text import word_tokenizer
from vidgen.testing import tiny_transformer
from vidgen.training.grounding import (
    GROUNDING,
    CrossAttentionProbe,
    binding_loss,
    grounding_loss,
    object_token_masks,
    phrase_targets,
    word_objects,
)


def test_phrase_targets_ground_each_word_to_its_object():
    captions = ["a red circle moves right and a blue square stays still", "a cyan triangle moves up", ""]
    ids = word_tokenizer()(captions, padding="max_length", max_length=16, return_tensors="pt").input_ids
    y = phrase_targets(ids)  # (3, 16, 3)
    colors, shapes_, motions = (GROUNDING[k] for k in ("color", "shape", "motion"))
    first = torch.tensor([colors.index("red"), shapes_.index("circle"), motions.index("right")])
    second = torch.tensor([colors.index("blue"), shapes_.index("square"), motions.index("still")])
    assert torch.equal(y[0, :5], first.expand(5, 3))  # "a red circle moves right"
    assert (y[0, 5] == -100).all()  # "and"
    assert torch.equal(y[0, 6:11], second.expand(5, 3))
    assert (y[0, 11:] == -100).all()  # </s> and padding
    assert torch.equal(
        y[1, 0], torch.tensor([colors.index("cyan"), shapes_.index("triangle"), motions.index("up")])
    )
    assert (y[2] == -100).all()  # the empty caption of caption dropout


def test_grounding_loss_falls_when_the_text_names_each_object():
    ids = word_tokenizer()(
        ["a red circle moves right and a blue square stays still"], padding="max_length", max_length=16,
        return_tensors="pt",
    ).input_ids  # fmt: skip
    targets = phrase_targets(ids)
    head = torch.nn.Linear(15, 15, bias=False)
    head.weight.data.copy_(torch.eye(15) * 20)
    sizes = [len(v) for v in GROUNDING.values()]
    offsets = torch.tensor([0, sizes[0], sizes[0] + sizes[1]])  # one-hot of each attribute
    onehot = torch.zeros(1, 16, 15)
    valid = targets[0, :, 0] >= 0
    for i in range(3):
        onehot[0, valid, targets[0, valid, i] + offsets[i]] = 1
    good = grounding_loss(head, onehot, targets)
    bad = grounding_loss(head, onehot.roll(6, dims=1), targets)  # words swapped between objects
    assert good < 1e-3 < bad
    assert grounding_loss(head, onehot, torch.full_like(targets, -100)) == 0  # nothing to ground


def test_word_objects_name_the_phrase_of_each_word():
    captions = ["a red circle moves right and a blue square stays still", "a cyan triangle moves up", ""]
    ids = word_tokenizer()(captions, padding="max_length", max_length=16, return_tensors="pt").input_ids
    which = word_objects(ids)  # (3, 16)
    assert which[0].tolist() == [0] * 5 + [-1] + [1] * 5 + [-1] * 5  # "and", </s> and padding: -1
    assert which[1].tolist() == [0] * 5 + [-1] * 11
    assert (which[2] == -1).all()


def test_object_token_masks_split_the_cached_object_tokens_by_object():
    n = 12
    per = object_token_masks(n, temporal=4, spatial=8)  # (n, 2, 5, 8, 8)
    _, captions, masks = shapes.render_training_batch(np.arange(n))
    assert per.shape == (n, 2, 5, 8, 8)
    assert torch.equal(per.any(1), shapes.object_tokens(masks, 4, 8))  # what the latent cache stores
    two = torch.tensor([" and " in c for c in captions])
    assert two.any() and (~two).any()
    assert per[two, 1].flatten(1).any(1).all() and not per[~two, 1].any()  # slot 1: the second object


def test_cross_attention_probe_records_the_attention_the_model_computes():
    dit = tiny_transformer(seed=4)
    probe = CrossAttentionProbe(dit, [1])
    attn = dit.transformer_blocks[1].attn2
    seen = {}
    attn.to_v.register_forward_hook(lambda m, i, o: seen.update(v=o.unflatten(-1, (attn.heads, -1))))
    attn.to_out[0].register_forward_hook(lambda m, i, o: seen.update(o=i[0]))
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 3 * 8 * 8, 8, generator=g), torch.randn(2, 5, 16, generator=g)
    dit(x, text, torch.tensor([300.0, 700.0]), None, 3, 8, 8)
    (p,) = probe.maps()  # (B, H, N, T)
    assert p.shape == (2, 2, 192, 5)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 2, 192))
    torch.testing.assert_close(torch.einsum("bhnt,bthd->bnhd", p, seen["v"]).flatten(-2), seen["o"])


def test_binding_loss_costs_attention_to_the_other_objects_phrase():
    words = torch.tensor([[0, 0, -1, 1, 1, -1]])  # phrase 0, "and", phrase 1, </s>
    tokens = torch.tensor([[0, 0, 1, -1]])  # two tokens of object 0, one of object 1, background
    weight = torch.ones(1, 4)

    def maps(rows):  # (1, 1, N, T) attention of each token
        return [torch.tensor(rows, dtype=torch.float)[None, None]]

    own = maps([[0.5, 0, 0.5, 0, 0, 0], [0, 0.4, 0, 0, 0, 0.6], [0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 0]])
    swapped = maps([[0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    half = maps([[0.5, 0, 0, 0.5, 0, 0]] * 3 + [[1, 0, 0, 0, 0, 0]])
    assert binding_loss(own, words, tokens, weight) < 1e-4  # "and" and </s> are free
    assert binding_loss(swapped, words, tokens, weight) > 10
    torch.testing.assert_close(
        binding_loss(half, words, tokens, weight), torch.tensor(0.6931), atol=1e-3, rtol=0
    )
    none = binding_loss(half, words, torch.full_like(tokens, -1), weight)
    assert none == 0  # nothing to bind (one-object or dropped captions)
