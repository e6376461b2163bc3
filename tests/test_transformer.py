import importlib.util

import pytest
import torch

from vidgen import KVCache, VidGenTransformer3DModel
from vidgen.testing import tiny_transformer

LAYOUTS = ["full", "factorized"]
F, H, W = 6, 2, 3
N = F * H * W


def _inputs(batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, N, 8, generator=g)  # (B, N, C)
    text = torch.randn(batch, 5, 16, generator=g)  # (B, T, C_text)
    text_mask = torch.tensor([[1, 1, 1, 0, 0]] * batch)
    t = torch.rand(batch, F, generator=g) * 1000  # per-frame timesteps (B, F)
    return x, text, text_mask, t


@pytest.mark.parametrize("layout", LAYOUTS)
def test_timestep_granularities_agree(layout):
    model = tiny_transformer(layout)
    x, text, mask, _ = _inputs(batch=2)
    per_sample = torch.tensor([700.0, 300.0])
    out_b = model(x, text, per_sample, mask, F, H, W).sample
    out_f = model(x, text, per_sample[:, None].expand(2, F), mask, F, H, W).sample
    out_n = model(x, text, per_sample[:, None].expand(2, N), mask, F, H, W).sample
    assert out_b.shape == (2, N, 8)
    torch.testing.assert_close(out_f, out_b, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_n, out_b, atol=1e-5, rtol=0)
    # A different timestep on one frame changes the output.
    t_f = per_sample[:, None].repeat(1, F)
    t_f[:, 0] = 0
    assert (model(x, text, t_f, mask, F, H, W).sample - out_b).abs().max() > 1e-3


@pytest.mark.parametrize("layout", LAYOUTS)
def test_text_padding_is_masked(layout):
    model = tiny_transformer(layout)
    x, text, mask, t = _inputs()
    out = model(x, text, t, mask, F, H, W).sample
    text2 = text.clone()
    text2[:, 3:] = 100.0  # padded positions
    torch.testing.assert_close(model(x, text2, t, mask, F, H, W).sample, out)
    text2[:, 0] += 1.0  # a real token
    assert (model(x, text2, t, mask, F, H, W).sample - out).abs().max() > 1e-4


def test_caption_positions_tell_word_order_apart():
    # Cross-attention alone is blind to the order of the text tokens; the position embedding is not.
    x, text, _, t = _inputs()
    swapped = text[:, [1, 0, 2, 3, 4]]
    plain = tiny_transformer()
    torch.testing.assert_close(
        plain(x, swapped, t, None, F, H, W).sample, plain(x, text, t, None, F, H, W).sample, atol=1e-5, rtol=0
    )
    placed = tiny_transformer(caption_positions=5)
    assert placed.caption_position_embedding.abs().sum() > 0  # randomized like every other weight
    out = placed(x, text, t, None, F, H, W).sample
    assert (placed(x, swapped, t, None, F, H, W).sample - out).abs().max() > 1e-4
    with pytest.raises(ValueError, match="caption_positions=5"):
        placed(x, torch.randn(1, 6, 16), t, None, F, H, W)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_runs_at_other_sizes_and_lengths(layout):
    model = tiny_transformer(layout)
    for f, h, w in [(1, 1, 1), (9, 4, 5), (3, 7, 2)]:
        x = torch.randn(1, f * h * w, 8)
        out = model(x, torch.randn(1, 4, 16), torch.tensor([500.0]), None, f, h, w).sample
        assert out.shape == x.shape and torch.isfinite(out).all()


def test_grid_mismatch_is_a_clear_error():
    model = tiny_transformer()
    with pytest.raises(ValueError, match="tokens but the grid"):
        model(torch.randn(1, 10, 8), torch.randn(1, 4, 16), torch.tensor([1.0]), None, 2, 2, 2)
    with pytest.raises(ValueError, match="timestep must be"):
        model(torch.randn(1, 8, 8), torch.randn(1, 4, 16), torch.rand(1, 3), None, 2, 2, 2)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_chunked_kv_cache_equals_block_causal_full_forward(layout):
    chunk = 2
    model = tiny_transformer(layout, causal_chunk_size=chunk)
    x, text, mask, t = _inputs()
    full = model(x, text, t, mask, F, H, W).sample

    cache = KVCache(num_layers=model.config.num_layers)
    outs = []
    for start in range(0, F, chunk):
        tokens = slice(start * H * W, (start + chunk) * H * W)
        kwargs = dict(frame_offset=start, kv_cache=cache)
        # A read-only pass (a denoising step) leaves the cache as it is ...
        model(x[:, tokens], text, t[:, start : start + chunk], mask, chunk, H, W, **kwargs)
        assert len(cache) == start
        # ... the writing pass (the context pass) appends this chunk.
        out = model(
            x[:, tokens], text, t[:, start : start + chunk], mask, chunk, H, W, update_kv_cache=True, **kwargs
        )
        outs.append(out.sample)
    chunked = torch.cat(outs, dim=1)
    diff = (chunked - full).abs().max().item()
    print(f"{layout}: chunked vs block-causal full forward max abs diff {diff:.2e}")
    assert diff <= 1e-5

    # The mask is real: the bidirectional model gives another answer, and the future does not leak back.
    bidirectional = VidGenTransformer3DModel.from_config({**model.config, "causal_chunk_size": None})
    bidirectional.load_state_dict(model.state_dict())
    assert (bidirectional(x, text, t, mask, F, H, W).sample - full).abs().max() > 1e-3
    x_future = x.clone()
    x_future[:, chunk * H * W :] += 1.0
    changed = model(x_future, text, t, mask, F, H, W).sample
    torch.testing.assert_close(changed[:, : chunk * H * W], full[:, : chunk * H * W])


def test_kv_cache_rolling_eviction_keeps_pinned_and_last_frames():
    cache = KVCache(num_layers=2, max_frames=5, num_pinned_frames=2)
    for start in range(0, 12, 3):
        frames = torch.arange(start, start + 3)
        kv = frames.float().view(1, 3, 1, 1, 1).expand(1, 3, 4, 2, 8)  # (B, F, S, H, D), value = frame index
        for layer in range(2):
            cache.append(layer, kv, kv.clone(), frames)
    assert cache.frame_indices.tolist() == [0, 1, 9, 10, 11]
    k, v, frames = cache.get(1)
    assert k.shape == (1, 5 * 4, 2, 8)
    assert k[0, ::4, 0, 0].tolist() == [0.0, 1.0, 9.0, 10.0, 11.0]


def test_kv_cache_rejects_bad_configuration():
    with pytest.raises(ValueError, match="num_pinned_frames"):
        KVCache(num_layers=1, max_frames=2, num_pinned_frames=2)
    with pytest.raises(ValueError, match="max_frames"):
        KVCache(num_layers=1, max_frames=0)


@torch.no_grad()  # FlexAttention has no backward on CPU
def test_attention_backends():
    model = tiny_transformer()
    x, text, mask, t = _inputs()
    reference = model(x, text, t, mask, F, H, W).sample
    model.set_attention_backend("flex")
    assert model.attention_backend == "flex"
    torch.testing.assert_close(model(x, text, t, mask, F, H, W).sample, reference, atol=1e-5, rtol=0)
    model.reset_attention_backend()
    with pytest.raises(ValueError, match="one of"):
        model.set_attention_backend("nope")
    if importlib.util.find_spec("xformers") is None:  # optional: without it, a clear error names the extra
        with pytest.raises(ValueError, match=r"vidgen\[xformers\]"):
            model.set_attention_backend("xformers")


def test_save_load_round_trip_uses_safetensors(tmp_path):
    model = tiny_transformer("factorized")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = VidGenTransformer3DModel.from_pretrained(tmp_path)
    x, text, mask, t = _inputs()
    torch.testing.assert_close(
        loaded(x, text, t, mask, F, H, W).sample, model(x, text, t, mask, F, H, W).sample
    )


def test_lora_adapter_and_gradient_checkpointing():
    from peft import LoraConfig

    model = tiny_transformer()
    x, text, mask, t = _inputs()
    base = model(x, text, t, mask, F, H, W).sample
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    lora = model(x, text, t, mask, F, H, W).sample
    assert (lora - base).abs().max() > 1e-4
    half = model(x, text, t, mask, F, H, W, attention_kwargs={"scale": 0.0}).sample
    torch.testing.assert_close(half, base, atol=1e-5, rtol=0)

    model.train()
    model(x, text, t, mask, F, H, W).sample.square().mean().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    model.enable_gradient_checkpointing()
    model(x, text, t, mask, F, H, W).sample.square().mean().backward()
    for g, p in zip(grads, [p for p in model.parameters() if p.requires_grad]):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)


def test_cache_writes_must_be_whole_contiguous_chunks():
    model = tiny_transformer(causal_chunk_size=2)
    x, text, mask, t = _inputs()
    cache = KVCache(num_layers=2)
    step = dict(kv_cache=cache, update_kv_cache=True)
    with pytest.raises(ValueError, match="cover whole chunks"):
        model(x[:, : H * W], text, t[:, :1], mask, 1, H, W, **step)
    model(x[:, : 2 * H * W], text, t[:, :2], mask, 2, H, W, **step)
    with pytest.raises(ValueError, match="frames must continue the cache"):
        model(x[:, : 2 * H * W], text, t[:, :2], mask, 2, H, W, **step)  # forgot frame_offset
