"""The default model's recipe: starting from a trained pipeline with other text positions, the
two-object share of the clips it draws, and deeper DiTs (the grounding losses: test_grounding.py)."""

import pytest
import torch
from transformers import T5EncoderModel

from vidgen import VidGenTransformer3DModel
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


def test_noise_draws_keep_the_uniform_stream_and_shift_a_share_towards_high_noise(load_script):
    recipe = load_script("train_default")
    uniform = recipe.noise_draws(4000, torch.Generator().manual_seed(0), 0.0, 1.0)
    recipe_stream = torch.rand(4000, generator=torch.Generator().manual_seed(0)).clamp(1e-4, 1 - 1e-4)
    assert torch.equal(uniform, recipe_stream)  # share 0: the uniform stream of the earlier legs
    high = recipe.noise_draws(4000, torch.Generator().manual_seed(0), 1.0, 1.0)
    assert ((high > 0) & (high < 1)).all()
    assert high.median().item() == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item(), abs=0.03)
    half = recipe.noise_draws(4000, torch.Generator().manual_seed(0), 0.5, 1.0)
    assert uniform.median() < half.median() < high.median()
    with pytest.raises(ValueError, match="--logit-normal-share must be in"):
        recipe.noise_draws(4, torch.Generator(), 1.5, 1.0)


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
