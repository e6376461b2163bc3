"""DraftAttention and FreeSwim: every sparse pattern against its dense masked reference, in fp32."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from diffusers import LTXVideoTransformer3DModel, WanTransformer3DModel

from vidgen import VidGenPipeline, VidGenVideoToVideoPipeline
from vidgen.attention import (
    DraftAttentionConfig,
    apply_draft_attention,
    apply_freeswim,
    conditional_rows,
    draft_pattern,
    installed_attention,
    reset_attention,
    window_pattern,
)
from vidgen.models.block_sparse import BlockSparsePattern, sparse_attention, tile_tokens
from vidgen.pipelines import generate_high_resolution
from vidgen.testing import randomize_, tiny_components, tiny_transformer

KERNELS = ["gather", "flex"]


@pytest.fixture(autouse=True)
def _quiet_flex():
    with warnings.catch_warnings():  # FlexAttention warns that it runs uncompiled on a CPU
        warnings.simplefilter("ignore")
        yield


def dense(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(
        1, 2
    )


def qkv(grid, batch=2, heads=3, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1] * grid[2]
    return [torch.randn(batch, n, heads, dim, generator=g) for _ in range(3)]


# --------------------------------------------------------------------------------------------------
# Tiling.
@pytest.mark.parametrize("grid,tile", [((2, 16, 32), (8, 16)), ((3, 10, 13), (4, 8)), ((1, 5, 5), (8, 16))])
def test_reorder_then_restore_is_the_identity_and_each_block_is_one_tile(grid, tile):
    t = tile_tokens(grid, tile)
    F_, H, W = grid
    n = F_ * H * W
    assert torch.equal(t.order[t.inverse], torch.arange(n))
    x = torch.randn(2, n, 3, 4)
    assert torch.equal(t.from_tiles(t.to_tiles(x)), x)
    th, tw = t.tile
    order = t.order.view(t.num_tiles, t.block_size)
    for b, block in enumerate(order):
        real = block[block < n]
        f, h, w = real // (H * W), real % (H * W) // W, real % W
        assert len(set(zip(f.tolist(), (h // th).tolist(), (w // tw).tolist(), strict=True))) == 1
        # Blocks come in draft-token order (frame, tile row, tile column).
        _, nh, nw = t.tile_grid
        assert (int(f[0]), int(h[0]) // th, int(w[0]) // tw) == (b // (nh * nw), b % (nh * nw) // nw, b % nw)


def test_a_128_token_tile_is_one_chunk_of_the_reordered_sequence():
    t = tile_tokens((2, 16, 32), (8, 16))
    assert t.block_size == 128 and t.num_tiles == 8 and bool(t.valid.all())


# --------------------------------------------------------------------------------------------------
# DraftAttention.
@pytest.mark.parametrize("sparsity", [0.5, 0.75, 0.9])
def test_kept_fraction_per_head_is_about_one_minus_sparsity(sparsity):
    grid = (4, 16, 32)  # 16 tiles of 8x16
    q, k, _ = qkv(grid, heads=4, dim=32)
    pattern = draft_pattern(q, k, tile_tokens(grid, (8, 16)), DraftAttentionConfig(sparsity=sparsity))
    T = pattern.tiling.num_tiles
    kept = pattern.kept_fraction()  # (B, H)
    # Exactly ceil((1 - s) T^2) by the threshold, plus at most T forced diagonal pairs.
    by_threshold = math.ceil((1 - sparsity) * T * T)
    assert bool((kept >= by_threshold / T**2).all()) and bool((kept <= (by_threshold + T) / T**2).all())
    assert bool(pattern.kept.diagonal(dim1=-2, dim2=-1).all())  # every query tile keeps its own tile


def test_sink_keeps_every_first_frame_tile():
    grid = (3, 16, 32)
    q, k, _ = qkv(grid)
    pattern = draft_pattern(q, k, tile_tokens(grid, (8, 16)), DraftAttentionConfig(sparsity=0.95, sink=True))
    assert bool(pattern.kept[..., :4].all())


@pytest.mark.parametrize("kernel", KERNELS + ["reference"])
def test_sparsity_zero_equals_dense(kernel):
    grid = (3, 10, 13)  # ragged: 10x13 tokens in 4x8 tiles
    q, k, v = qkv(grid)
    pattern = draft_pattern(
        q, k, tile_tokens(grid, (4, 8)), DraftAttentionConfig(sparsity=0.0, kernel=kernel)
    )
    assert bool(pattern.kept.all())
    torch.testing.assert_close(sparse_attention(q, k, v, pattern), dense(q, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("grid,tile", [((3, 10, 13), (4, 8)), ((2, 16, 32), (8, 16))])
def test_draft_sparse_path_equals_the_dense_masked_reference(kernel, grid, tile):
    q, k, v = qkv(grid)
    pattern = draft_pattern(q, k, tile_tokens(grid, tile), DraftAttentionConfig(sparsity=0.7, kernel=kernel))
    got = sparse_attention(q, k, v, pattern)
    torch.testing.assert_close(got, sparse_attention(q, k, v, pattern, "reference"), atol=1e-5, rtol=1e-5)
    assert (got - dense(q, k, v)).abs().max() > 1e-3  # it really is sparse


def test_gather_kernel_handles_rows_of_different_widths_in_small_chunks():
    from vidgen.models.block_sparse import _gather

    grid = (3, 10, 13)
    q, k, v = qkv(grid)
    t = tile_tokens(grid, (4, 8))
    kept = torch.rand(2, 3, t.num_tiles, t.num_tiles, generator=torch.Generator().manual_seed(1)) < 0.3
    pattern = BlockSparsePattern(t, kept | torch.eye(t.num_tiles, dtype=torch.bool))
    torch.testing.assert_close(
        _gather(q, k, v, pattern, budget=3000), _gather(q, k, v, pattern), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        _gather(q, k, v, pattern), sparse_attention(q, k, v, pattern, "reference"), atol=1e-5, rtol=1e-5
    )


def test_draft_config_rejects_bad_values():
    with pytest.raises(ValueError, match="sparsity must be in"):
        DraftAttentionConfig(sparsity=1.0)
    with pytest.raises(ValueError, match="tile must be"):
        DraftAttentionConfig(tile=(0, 4))
    with pytest.raises(ValueError, match="kernel must be one of"):
        q, k, v = qkv((1, 4, 4))
        sparse_attention(
            q, k, v, BlockSparsePattern(tile_tokens((1, 4, 4), (2, 2)), torch.ones(1, 1, 4, 4) > 0), "x"
        )


# --------------------------------------------------------------------------------------------------
# FreeSwim windows.
def keys_per_query(pattern):
    return pattern.token_mask()[0, 0].sum(-1)  # (N,)


def test_inward_windows_give_every_query_the_full_window_and_naive_ones_lose_keys_at_borders():
    grid, window = (3, 20, 28), (8, 12)
    inward = keys_per_query(window_pattern(grid, window, True, (4, 4)))
    naive = keys_per_query(window_pattern(grid, window, False, (4, 4)))
    full = 3 * 8 * 12  # the window in every frame
    assert bool((inward == full).all())
    assert int(naive.max()) == full and int(naive.min()) < full
    corner = 0  # token (0, 0, 0): its naive window is clipped on two sides
    assert int(naive[corner]) == 3 * (8 - 4) * (12 - 6)


def test_an_inward_window_spans_all_frames_alike():
    grid = (4, 12, 12)
    mask = window_pattern(grid, (6, 6), True, (3, 3)).token_mask()[0, 0].view(4, 144, 4, 144)
    per_frame = mask.sum(-1)  # (F, HW, F)
    assert bool((per_frame == 36).all())


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("inward", [True, False])
def test_window_sparse_path_equals_the_dense_masked_reference(kernel, inward):
    grid = (2, 11, 14)
    q, k, v = qkv(grid)
    pattern = window_pattern(grid, (6, 8), inward, (3, 4), kernel)
    torch.testing.assert_close(
        sparse_attention(q, k, v, pattern),
        sparse_attention(q, k, v, pattern, "reference"),
        atol=1e-5,
        rtol=1e-5,
    )


def test_window_as_large_as_the_grid_equals_dense():
    grid = (2, 8, 12)
    q, k, v = qkv(grid)
    pattern = window_pattern(grid, (8, 12), True, (4, 4))
    torch.testing.assert_close(sparse_attention(q, k, v, pattern), dense(q, k, v), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# Installed on transformers: vidgen's, LTX-Video's, Wan's.
GRID = (3, 12, 20)


def make(name):
    if name == "vidgen":
        return tiny_transformer()
    if name == "ltx":
        model = LTXVideoTransformer3DModel(
            in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2,
            attention_head_dim=8, cross_attention_dim=16, num_layers=2, caption_channels=16,
        )  # fmt: skip
        return randomize_(model, seed=1, std=0.1).eval()
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=8, out_channels=8,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=64,
    )  # fmt: skip
    return randomize_(model, seed=2, std=0.1).eval()


def run(model, t=500.0, batch=2):
    g = torch.Generator().manual_seed(3)
    F_, H, W = GRID
    text = torch.randn(batch, 5, 16, generator=g)
    timestep = torch.full((batch,), t)
    with torch.no_grad():
        if isinstance(model, WanTransformer3DModel):
            x = torch.randn(batch, 8, F_, 2 * H, 2 * W, generator=g)
            return model(hidden_states=x, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]
        x = torch.randn(batch, F_ * H * W, 8, generator=g)
        return model(
            hidden_states=x, encoder_hidden_states=text, timestep=timestep, encoder_attention_mask=torch.ones(batch, 5),
            num_frames=F_, height=H, width=W, return_dict=False,
        )[0]  # fmt: skip


MODELS = ["vidgen", "ltx", "wan"]


@pytest.mark.parametrize("name", MODELS)
def test_installed_kinds_match_dense_where_they_must_and_reset_restores_it_exactly(name):
    model = make(name)
    reference = run(model)
    apply_draft_attention(model, sparsity=0.0, tile=(4, 8), dense_blocks=0, dense_timestep=1000)
    torch.testing.assert_close(run(model), reference, atol=1e-5, rtol=1e-5)
    apply_draft_attention(model, sparsity=0.8, tile=(4, 8), dense_blocks=0, dense_timestep=1000)
    assert (run(model) - reference).abs().max() > 1e-4
    apply_freeswim(model, train_size=GRID[1:])  # the window covers the grid: dense
    torch.testing.assert_close(run(model), reference, atol=1e-5, rtol=1e-5)
    apply_freeswim(model, train_size=(6, 8), cache_steps=1)
    assert (run(model) - reference).abs().max() > 1e-4
    reset_attention(model)
    assert installed_attention(model) is None
    assert torch.equal(run(model), reference)


@pytest.mark.parametrize("name", MODELS)
def test_draft_warm_up_keeps_early_steps_and_first_blocks_dense(name):
    model = make(name)
    reference = run(model, t=950.0)
    apply_draft_attention(model, sparsity=0.8, tile=(4, 8), dense_timestep=925, dense_blocks=0)
    torch.testing.assert_close(run(model, t=950.0), reference, atol=1e-5, rtol=1e-5)  # above the threshold
    apply_draft_attention(model, sparsity=0.8, tile=(4, 8), dense_timestep=1000, dense_blocks=2)
    torch.testing.assert_close(run(model, t=950.0), reference, atol=1e-5, rtol=1e-5)  # every block dense


class CallLog:
    """Records the batch size of every self-attention call and how many ran dense."""

    def __init__(self, kind):
        self.calls, self.kind, inner = [], kind, kind.self_attention

        def spy(q, k, v, layer, dense):
            self.calls.append((q.shape[0], kind.dual))
            return inner(q, k, v, layer, dense)

        kind.self_attention = spy


def test_freeswim_dual_path_runs_the_full_branch_on_conditional_rows_only_every_cache_steps():
    model = make("vidgen")
    kind = apply_freeswim(model, train_size=(6, 8), cache_steps=2)
    log = CallLog(kind)
    for t in (900.0, 800.0, 700.0):  # three denoising steps, batch [uncond; cond]
        with conditional_rows(torch.tensor([False, True])):
            out = run(model, t=t)
        assert out.shape[0] == 2
    layers = 2
    # Step 0 and 2 are guide steps: 2 rows + 1 conditional row in the full branch; step 1 is not.
    assert [c for c, _ in log.calls] == [3] * layers + [2] * layers + [3] * layers
    assert len(kind.cache) == layers


def test_freeswim_reuses_the_cached_override_between_guide_steps():
    outputs = {}
    for dual in (True, False):
        model = make("vidgen")
        apply_freeswim(model, train_size=(6, 8), dual_path=dual, cache_steps=2)
        run(model, t=900.0)  # guide step: fills the cache
        outputs[dual] = run(model, t=800.0)  # no full branch; the cached cross-attention overrides
    assert (outputs[True] - outputs[False]).abs().max() > 1e-4


def test_freeswim_with_separate_conditional_and_unconditional_calls():
    model = make("wan")  # diffusers' WanPipeline guides with two calls named by cache_context
    kind = apply_freeswim(model, train_size=(6, 8), cache_steps=2)
    log = CallLog(kind)
    for t in (900.0, 800.0):
        with model.cache_context("cond"):
            run(model, t=t, batch=1)
        with model.cache_context("uncond"):
            run(model, t=t, batch=1)
    layers = 2
    # Step 0: the conditional call doubles its row (full branch), the unconditional one does not.
    assert [c for c, _ in log.calls] == [2] * layers + [1] * layers + [1] * layers + [1] * layers
    assert sorted({slot for slot, _ in kind.cache}) == ["cond"]
    reset_attention(model)
    assert "cache_context" not in vars(model)  # the class's method again


@pytest.mark.parametrize("name", ["ltx", "wan"])
def test_freeswim_windows_on_diffusers_models_match_the_reference_kernel(name):
    outputs = []
    for kernel in ("gather", "reference"):
        model = make(name)
        apply_freeswim(model, train_size=(6, 8), dual_path=False, kernel=kernel)
        outputs.append(run(model))
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)


def test_default_train_size_counts_tokens_after_patchify():
    model = tiny_transformer(patch_size=2)  # sample_size (3, 8, 8) latent -> 4x4 tokens
    assert apply_freeswim(model).config.train_size == (4, 4)


def test_freeswim_cross_attention_override_changes_the_window_branch():
    model = make("vidgen")
    apply_freeswim(model, train_size=(6, 8), dual_path=False)
    windows_only = run(model)
    apply_freeswim(model, train_size=(6, 8), dual_path=True, cache_steps=1)
    dual = run(model)
    assert (dual - windows_only).abs().max() > 1e-4


def test_unsupported_transformers_and_layouts_are_refused():
    with pytest.raises(ValueError, match="transformer must be one of"):
        apply_draft_attention(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="block_layout='full'"):
        apply_draft_attention(tiny_transformer("factorized"))
    with pytest.raises(ValueError, match="train_size is required"):
        apply_freeswim(make("ltx"))


# --------------------------------------------------------------------------------------------------
# Pipelines.
@pytest.fixture(scope="module")
def pipe():
    p = VidGenPipeline(**tiny_components())
    p.set_progress_bar_config(disable=True)
    return p


def generate(pipe, **kw):
    kw = {"num_inference_steps": 2, "generator": torch.Generator().manual_seed(0), "output_type": "pt"} | kw
    return pipe("a red circle moves right", **kw).frames[0]


def test_pipeline_enable_and_disable(pipe):
    reference = generate(pipe, height=32, width=64)
    pipe.enable_draft_attention(sparsity=0.8, tile=(2, 4), dense_blocks=0, dense_timestep=1000)
    assert (generate(pipe, height=32, width=64) - reference).abs().max() > 1e-4
    pipe.disable_draft_attention()
    assert torch.equal(generate(pipe, height=32, width=64), reference)
    pipe.enable_freeswim()  # the model's size: 32x32 pixels = 8x8 tokens
    assert installed_attention(pipe.transformer).config.train_size == (8, 8)
    assert (generate(pipe, height=32, width=64) - reference).abs().max() > 1e-4
    pipe.disable_draft_attention()  # a different kind: left installed
    assert installed_attention(pipe.transformer) is not None
    pipe.disable_freeswim()
    assert torch.equal(generate(pipe, height=32, width=64), reference)


def test_video_to_video_runs_the_last_strength_fraction_of_the_steps(pipe):
    v2v = VidGenVideoToVideoPipeline(**pipe.components)
    v2v.set_progress_bar_config(disable=True)
    video = generate(pipe)
    out = v2v(
        video, "a red circle moves right", strength=0.5, num_inference_steps=6, output_type="pt"
    ).frames[0]
    assert out.shape == video.shape and v2v.num_timesteps == 3
    clean = v2v.pack_latents(
        v2v.normalize_latents(v2v.vae.encode(v2v.video_to_pixels(video, 32, 32)).latent_dist.mode())
    )
    near, far = (
        v2v(video, "a", strength=s, num_inference_steps=20, output_type="latent").frames for s in (0.05, 1.0)
    )
    assert (near - clean).abs().mean() < 0.5 * (far - clean).abs().mean()  # low strength keeps the input
    with pytest.raises(ValueError, match="strength must be in"):
        v2v(video, "a", strength=0.0)
    with pytest.raises(ValueError, match="video is required"):
        v2v(None, "a")


@pytest.mark.parametrize("recipe", ["upscale", "noise"])
def test_high_resolution_recipes_return_the_target_size(pipe, recipe):
    pipe.enable_freeswim()
    try:
        video = generate_high_resolution(
            pipe, "a red circle moves right", 64, 64, recipe=recipe, num_inference_steps=2,
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
    finally:
        pipe.disable_freeswim()
    assert video.shape == (9, 3, 64, 64) and bool(torch.isfinite(video).all())
    with pytest.raises(ValueError, match="recipe must be"):
        generate_high_resolution(pipe, "a", 64, 64, recipe="x")
