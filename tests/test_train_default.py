"""The default model's recipe: starting from a trained pipeline with other text positions, the
two-object share of the clips it draws, and the text encoder's and the cross-attention's grounding losses."""

import numpy as np
import pytest
import torch
from transformers import T5EncoderModel

from vidgen import VidGenTransformer3DModel
from vidgen.data import shapes
from vidgen.data.text import word_tokenizer
from vidgen.testing import randomize_, tiny_transformer


def test_init_from_keeps_the_text_encoder_function_across_position_buckets(load_script, tmp_path):
    recipe = load_script("train_default")
    vocab = len(word_tokenizer())
    old_t5 = randomize_(T5EncoderModel(recipe.text_encoder_config(vocab, "coarse")), seed=1).eval()
    old_dit = tiny_transformer(seed=2)
    old_t5.save_pretrained(tmp_path / "text_encoder")
    old_dit.save_pretrained(tmp_path / "transformer")

    new_t5 = T5EncoderModel(recipe.text_encoder_config(vocab, "exact"))
    new_dit = tiny_transformer(seed=3)
    recipe.init_from_pipeline(tmp_path, new_dit, new_t5)

    assert new_t5.config.relative_attention_num_buckets != old_t5.config.relative_attention_num_buckets
    ids = word_tokenizer()(
        ["a red circle moves right and a blue square stays still", "a cyan triangle moves up"],
        padding="max_length", max_length=16, return_tensors="pt",
    ).input_ids  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(new_t5.eval()(ids)[0], old_t5(ids)[0], atol=1e-5, rtol=0)
    for (name, a), b in zip(old_dit.state_dict().items(), new_dit.state_dict().values()):
        assert torch.equal(a, b), name
    # The exact table really tells distances 2..15 apart once it trains: they are separate buckets now.
    bucket = recipe.T5Attention._relative_position_bucket
    distances = torch.arange(2, 16)
    assert len(set(bucket(distances, True, 32, 16).tolist())) == len(distances)
    assert len(set(bucket(distances, True, 8, 128).tolist())) == 1


def test_clip_weights_give_the_two_object_share(load_script):
    recipe = load_script("train_default")
    tok = word_tokenizer()
    captions = ["a red circle moves right"] * 6 + ["a red circle moves up and a blue square stays still"] * 2
    tokens = tok(captions, padding="max_length", max_length=16, return_tensors="pt").input_ids
    assert recipe.clip_weights(tokens, None) is None
    w = recipe.clip_weights(tokens, 0.75)
    assert w.sum().item() == pytest.approx(1.0)
    assert w[6:].sum().item() == pytest.approx(0.75)
    assert torch.allclose(w[:6], w[0].expand(6))  # equal within each group
    with pytest.raises(ValueError, match="--two-object-share must be in"):
        recipe.clip_weights(tokens, 1.0)
    with pytest.raises(ValueError, match="both one-object and two-object"):
        recipe.clip_weights(tokens[:6], 0.5)


def test_grown_block_order_spreads_the_new_blocks(load_script):
    order = load_script("train_default").grown_block_order
    assert order(5, 7) == [0, 1, None, 2, None, 3, 4]
    assert order(2, 3) == [0, None, 1]
    assert order(4, 4) == [0, 1, 2, 3]
    assert order(2, 8) == [0, None, None, None, None, None, 1, None]  # more new blocks than trained ones
    with pytest.raises(ValueError, match="--dit-layers"):
        order(5, 4)


def test_a_deeper_dit_with_text_positions_starts_as_the_trained_one_and_its_new_parts_train(load_script):
    recipe = load_script("train_default")
    trained = tiny_transformer(seed=2)  # 2 blocks
    deeper = VidGenTransformer3DModel(**{**trained.config, "num_layers": 4, "caption_positions": 5})
    recipe.init_dit_from(trained, deeper)
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 3 * 8 * 8, 8, generator=g), torch.randn(2, 5, 16, generator=g)
    t = torch.full((2, 3 * 8 * 8), 500.0)
    with torch.no_grad():
        want = trained(x, text, t, None, 3, 8, 8).sample
        got = deeper.eval()(x, text, t, None, 3, 8, 8).sample
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # The new blocks are not dead: their zeroed output projections get gradients.
    deeper.train()(x, text, t, None, 3, 8, 8).sample.square().mean().backward()
    new = deeper.transformer_blocks[1]  # 2 -> 4 puts the new blocks at 1 and 2
    assert new.attn1.to_out[0].weight.grad.abs().sum() > 0
    assert new.ff.net[2].weight.grad.abs().sum() > 0
    assert deeper.caption_position_embedding.grad.abs().sum() > 0


def test_phrase_targets_ground_each_word_to_its_object(load_script):
    recipe = load_script("train_default")
    captions = ["a red circle moves right and a blue square stays still", "a cyan triangle moves up", ""]
    ids = word_tokenizer()(captions, padding="max_length", max_length=16, return_tensors="pt").input_ids
    y = recipe.phrase_targets(ids)  # (3, 16, 3)
    colors, shapes_, motions = (recipe.GROUNDING[k] for k in ("color", "shape", "motion"))
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


def test_grounding_loss_falls_when_the_text_names_each_object(load_script):
    recipe = load_script("train_default")
    ids = word_tokenizer()(
        ["a red circle moves right and a blue square stays still"], padding="max_length", max_length=16,
        return_tensors="pt",
    ).input_ids  # fmt: skip
    targets = recipe.phrase_targets(ids)
    head = torch.nn.Linear(15, 15, bias=False)
    head.weight.data.copy_(torch.eye(15) * 20)
    sizes = [len(v) for v in recipe.GROUNDING.values()]
    offsets = torch.tensor([0, sizes[0], sizes[0] + sizes[1]])  # one-hot of each attribute
    onehot = torch.zeros(1, 16, 15)
    valid = targets[0, :, 0] >= 0
    for i in range(3):
        onehot[0, valid, targets[0, valid, i] + offsets[i]] = 1
    good = recipe.grounding_loss(head, onehot, targets)
    bad = recipe.grounding_loss(head, onehot.roll(6, dims=1), targets)  # words swapped between objects
    assert good < 1e-3 < bad
    assert recipe.grounding_loss(head, onehot, torch.full_like(targets, -100)) == 0  # nothing to ground


def test_word_objects_name_the_phrase_of_each_word(load_script):
    recipe = load_script("train_default")
    captions = ["a red circle moves right and a blue square stays still", "a cyan triangle moves up", ""]
    ids = word_tokenizer()(captions, padding="max_length", max_length=16, return_tensors="pt").input_ids
    which = recipe.word_objects(ids)  # (3, 16)
    assert which[0].tolist() == [0] * 5 + [-1] + [1] * 5 + [-1] * 5  # "and", </s> and padding: -1
    assert which[1].tolist() == [0] * 5 + [-1] * 11
    assert (which[2] == -1).all()


def test_object_token_masks_split_the_cached_object_tokens_by_object(load_script):
    recipe = load_script("train_default")
    n = 12
    per = recipe.object_token_masks(n, temporal=4, spatial=8)  # (n, 2, 5, 8, 8)
    _, captions, masks = shapes.render_training_batch(np.arange(n))
    assert per.shape == (n, 2, 5, 8, 8)
    assert torch.equal(per.any(1), shapes.object_tokens(masks, 4, 8))  # what the latent cache stores
    two = torch.tensor([" and " in c for c in captions])
    assert two.any() and (~two).any()
    assert per[two, 1].flatten(1).any(1).all() and not per[~two, 1].any()  # slot 1: the second object


def test_cross_attention_probe_records_the_attention_the_model_computes(load_script):
    recipe = load_script("train_default")
    dit = tiny_transformer(seed=4)
    probe = recipe.CrossAttentionProbe(dit, [1])
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


def test_binding_loss_costs_attention_to_the_other_objects_phrase(load_script):
    recipe = load_script("train_default")
    words = torch.tensor([[0, 0, -1, 1, 1, -1]])  # phrase 0, "and", phrase 1, </s>
    tokens = torch.tensor([[0, 0, 1, -1]])  # two tokens of object 0, one of object 1, background
    weight = torch.ones(1, 4)

    def maps(rows):  # (1, 1, N, T) attention of each token
        return [torch.tensor(rows, dtype=torch.float)[None, None]]

    own = maps([[0.5, 0, 0.5, 0, 0, 0], [0, 0.4, 0, 0, 0, 0.6], [0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 0]])
    swapped = maps([[0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    half = maps([[0.5, 0, 0, 0.5, 0, 0]] * 3 + [[1, 0, 0, 0, 0, 0]])
    assert recipe.binding_loss(own, words, tokens, weight) < 1e-4  # "and" and </s> are free
    assert recipe.binding_loss(swapped, words, tokens, weight) > 10
    torch.testing.assert_close(
        recipe.binding_loss(half, words, tokens, weight), torch.tensor(0.6931), atol=1e-3, rtol=0
    )
    none = recipe.binding_loss(half, words, torch.full_like(tokens, -1), weight)
    assert none == 0  # nothing to bind (one-object or dropped captions)
