"""Unit tests that catch a broken positional variant, on tiny CPU models."""

import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from cml.model.encoder import VARIANTS, Encoder, EncoderConfig, PatchEmbed, grid_coordinates
from cml.model.positional import AlibiBias, RotaryEmbedding, SinCosEmbedding, alibi_slopes, apply_rotary

CROP = 32  # "training crop" of the tiny models, in frames
POOLS = ("meanstd", "mean", "cls")


def tiny(variant: str, sharp: bool = False, **overrides) -> Encoder:
    """16 mels; 1-D tokens of 2 frames, 2-D patches of 4 x 4; head dim 8 (rope2d needs a multiple of 4).

    `sharp` draws weights with std 1/sqrt(fan_in): at the GPT-2 init (std 0.02) attention is almost
    uniform, so what a model can see of positions hides in the 4th decimal; a trained model is sharper.
    """
    cfg = dict(variant=variant, n_mels=16, frames_per_token=2, patch_freq=4, patch_time=4, dim=32, depth=2,
               heads=4, mlp_ratio=2, embed_dim=16, proj_dim=8)
    torch.manual_seed(0)
    model = Encoder(EncoderConfig(**{**cfg, **overrides})).eval()
    if sharp:
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, std=m.in_features ** -0.5)
    return model


def assert_differs(a: torch.Tensor, b: torch.Tensor) -> None:
    """Differ by far more than float noise (the invariant controls below agree to ~1e-6)."""
    assert (a - b).abs().max() > 1e-3


def spectrogram(batch: int, frames: int, seed: int = 0, mels: int = 16) -> torch.Tensor:
    return torch.randn(batch, mels, frames, generator=torch.Generator().manual_seed(seed))


# --- RoPE ------------------------------------------------------------------------------------------

def rope_logits(rope: RotaryEmbedding, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(3, len(q_pos), 16, generator=g), torch.randn(3, len(k_pos), 16, generator=g)
    return apply_rotary(q, rope(q_pos)) @ apply_rotary(k, rope(k_pos)).transpose(-1, -2)


@pytest.mark.parametrize("axes, shift", [(1, (37.0,)), (2, (3.0, 0.0)), (2, (0.0, 37.0)), (2, (2.0, 11.0))])
def test_rope_logits_depend_only_on_relative_offsets(axes, shift):
    g = torch.Generator().manual_seed(0)
    q_pos, k_pos = (torch.randint(0, 40, (12, axes), generator=g).float() for _ in range(2))
    rope = RotaryEmbedding(16, axes)
    base = rope_logits(rope, q_pos, k_pos)
    torch.testing.assert_close(rope_logits(rope, q_pos + torch.tensor(shift), k_pos + torch.tensor(shift)), base,
                               atol=1e-4, rtol=1e-4)
    for axis in range(axes):  # ...and the offsets along every axis do matter
        stretch = torch.ones(axes)
        stretch[axis] = 2.0
        assert not torch.allclose(rope_logits(rope, q_pos * stretch, k_pos * stretch), base, atol=1e-2)


def test_rope2d_splits_head_dims_between_frequency_and_time():
    angles = RotaryEmbedding(16, axes=2)(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # (2, 16)
    # pair c turns with angles[:, c], c < 8; first 4 pairs with frequency, last 4 with time
    assert (angles[0, :4] != 0).all() and (angles[0, 4:8] == 0).all()
    assert (angles[1, :4] == 0).all() and (angles[1, 4:8] != 0).all()


# --- ALiBi -----------------------------------------------------------------------------------------

def reference_get_slopes(n):
    """Verbatim from ofirpress/attention_with_linear_biases (fairseq/models/transformer.py)."""
    def get_slopes_power_of_2(n):
        start = (2 ** (-2 ** -(math.log2(n) - 3)))
        ratio = start
        return [start * ratio ** i for i in range(n)]

    if math.log2(n).is_integer():
        return get_slopes_power_of_2(n)
    else:
        closest_power_of_2 = 2 ** math.floor(math.log2(n))
        return get_slopes_power_of_2(closest_power_of_2) + \
            reference_get_slopes(2 * closest_power_of_2)[0::2][:n - closest_power_of_2]


def test_alibi_slopes_for_8_heads_are_the_published_sequence():
    assert alibi_slopes(8).tolist() == pytest.approx([1 / 2 ** i for i in range(1, 9)])


@pytest.mark.parametrize("heads", [1, 2, 3, 4, 6, 8, 12, 16, 24])
def test_alibi_slopes_match_reference_including_non_powers_of_two(heads):
    assert alibi_slopes(heads).tolist() == pytest.approx(reference_get_slopes(heads), rel=1e-6)


def test_alibi1d_bias_is_minus_slope_times_time_distance():
    pos = grid_coordinates(1, 7, axes=1, device=torch.device("cpu"))
    bias = AlibiBias(4)(pos, pos)
    m = alibi_slopes(4)
    expected = torch.tensor([[[-m[h] * abs(i - j) for j in range(7)] for i in range(7)] for h in range(4)])
    torch.testing.assert_close(bias, expected)


@pytest.mark.parametrize("freq_scale", [1.0, 2.0])
def test_alibi2d_bias_is_minus_slope_times_euclidean_distance(freq_scale):
    n_freq, n_time = 3, 4
    pos = grid_coordinates(n_freq, n_time, axes=2, device=torch.device("cpu"))  # (12, 2) = (f, t)
    bias = AlibiBias(6, axis_scale=(freq_scale, 1.0))(pos, pos)
    m = alibi_slopes(6)
    cells = [(f, t) for t in range(n_time) for f in range(n_freq)]  # time-major token order
    expected = torch.tensor([[[-m[h] * math.hypot(freq_scale * (f1 - f2), t1 - t2) for f2, t2 in cells]
                              for f1, t1 in cells] for h in range(6)])
    assert pos.tolist() == [list(map(float, c)) for c in cells]
    torch.testing.assert_close(bias, expected)


@pytest.mark.parametrize("variant", ["alibi1d", "alibi2d"])
def test_alibi_query_blocks_and_cls_rows_reproduce_the_full_bias(variant):
    """Long inputs build the bias in blocks of query rows in every layer; short ones build it once.
    The CLS row and column carry no bias."""
    whole, blocked = tiny(variant, pool="cls"), tiny(variant, pool="cls", attn_block=5, bias_cache_mb=0)
    x = spectrogram(2, CROP)
    torch.testing.assert_close(blocked.embed(x), whole.embed(x))
    n = whole.n_tokens(CROP) + 1
    full = whole._inputs(x)[2](0, n)
    assert full.shape == (4, n, n)
    assert (full[:, 0, :] == 0).all() and (full[:, :, 0] == 0).all() and (full[:, 1:, 1:] < 0).any()
    block_rows = blocked._inputs(x)[2]
    torch.testing.assert_close(torch.cat([block_rows(s, s + 5) for s in range(0, n, 5)], dim=1), full)


# --- sin-cos ---------------------------------------------------------------------------------------

def test_sincos_is_defined_for_any_length_and_prefix_stable():
    emb = SinCosEmbedding(32, axes=1)
    short = emb(grid_coordinates(1, 10, 1, torch.device("cpu")))
    long = emb(grid_coordinates(1, 5000, 1, torch.device("cpu")))
    assert long.shape == (5000, 32) and torch.isfinite(long).all()
    torch.testing.assert_close(long[:10], short)


def test_sincos2d_encodes_both_axes():
    pos = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # origin, one step in frequency, one in time
    emb = SinCosEmbedding(32, axes=2)(pos)
    assert not torch.allclose(emb[1, :16], emb[0, :16]) and torch.equal(emb[1, 16:], emb[0, 16:])
    assert torch.equal(emb[2, :16], emb[0, :16]) and not torch.allclose(emb[2, 16:], emb[0, 16:])


# --- tokens ----------------------------------------------------------------------------------------

def test_patch_tokens_line_up_with_their_grid_coordinates():
    """Each token's patch is the one its (frequency, time) coordinate names; partial patches are dropped."""
    n_freq, n_time, pf, pt = 3, 5, 4, 2
    f_idx = torch.arange(n_freq).repeat_interleave(pf)[:, None]  # (M, 1) frequency row of each mel bin
    t_idx = torch.arange(n_time).repeat_interleave(pt)[None, :]  # (1, T) time column of each frame
    x = torch.cat([(10 * f_idx + t_idx).float(), torch.full((n_freq * pf, 1), 99.0)], dim=1)[None]  # + 1 frame
    embed = PatchEmbed(pf, pt, dim=1)
    with torch.no_grad():
        embed.linear.weight.fill_(1 / (pf * pt)), embed.linear.bias.zero_()  # token = mean of its patch
        tokens, nf, nt = embed(x)
    coords = grid_coordinates(nf, nt, axes=2, device=torch.device("cpu"))
    assert (nf, nt) == (n_freq, n_time)
    torch.testing.assert_close(tokens[0, :, 0], 10 * coords[:, 0] + coords[:, 1])


# --- what each variant can and cannot see ----------------------------------------------------------

def patchwise_constant(n_cells: int, patch: int) -> torch.Tensor:
    """(1, n*patch, n*patch) input, constant on each patch: transposing it transposes the patch grid and
    leaves every patch's content unchanged, so only position handling can tell the two apart."""
    cells = torch.randn(1, n_cells, n_cells, generator=torch.Generator().manual_seed(3))
    return cells.repeat_interleave(patch, dim=1).repeat_interleave(patch, dim=2)


@pytest.mark.parametrize("variant, tokens", [("alibi2d", None), ("rope2d", None), ("sincos", "2d")])
@pytest.mark.parametrize("pool", POOLS)
def test_2d_variants_distinguish_frequency_from_time(variant, tokens, pool):
    model, x = tiny(variant, sharp=True, tokens=tokens, pool=pool), patchwise_constant(4, 4)  # 4 x 4 patches
    assert_differs(model.embed(x), model.embed(x.transpose(1, 2)))


@pytest.mark.parametrize("variant, overrides", [("none", {"tokens": "2d"}), ("alibi2d", {"alibi_freq_scale": 1.0})])
def test_grid_transpose_is_invisible_without_anisotropic_positions(variant, overrides):
    """Control for the test above: no positions, or CROMA's isotropic distance, cannot see the transpose."""
    model, x = tiny(variant, sharp=True, **overrides), patchwise_constant(4, 4)
    torch.testing.assert_close(model.embed(x.transpose(1, 2)), model.embed(x), atol=1e-5, rtol=1e-5)


def permute_time_tokens(x: torch.Tensor, frames_per_token: int, perm: torch.Tensor) -> torch.Tensor:
    B, M, T = x.shape
    return x.view(B, M, T // frames_per_token, frames_per_token)[:, :, perm].reshape(B, M, T)


@pytest.mark.parametrize("pool", POOLS)
def test_none_is_permutation_invariant_over_tokens(pool):
    x = spectrogram(2, CROP)
    perm = torch.randperm(CROP // 2, generator=torch.Generator().manual_seed(0))
    xp = permute_time_tokens(x, 2, perm)
    model = tiny("none", sharp=True, pool=pool)
    torch.testing.assert_close(model.embed(xp), model.embed(x), atol=1e-5, rtol=1e-5)
    for variant in ("sincos", "alibi1d", "rope1d"):  # the positional variants do see the order
        other = tiny(variant, sharp=True, pool=pool)
        assert_differs(other.embed(xp), other.embed(x))


# --- lengths, chunking, shapes ---------------------------------------------------------------------

@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("pool", POOLS)
def test_every_variant_runs_on_inputs_8x_longer_than_the_crop(variant, pool):
    model = tiny(variant, pool=pool)
    with torch.no_grad():
        e, z = model(spectrogram(2, 8 * CROP))
    assert e.shape == (2, 16) and z.shape == (2, 8)
    assert torch.isfinite(e).all() and torch.isfinite(z).all()


@pytest.mark.parametrize("variant", ["rope1d", "alibi2d"])
def test_trailing_frames_short_of_a_token_are_trimmed(variant):
    model = tiny(variant)
    x = spectrogram(1, CROP + model.cfg.patch[1] - 1)
    torch.testing.assert_close(model.embed(x), model.embed(x[..., :CROP]))


@pytest.mark.parametrize("variant", ["alibi1d", "rope2d"])
def test_chunked_mode(variant):
    model = tiny(variant)
    x = spectrogram(2, 100)
    with torch.no_grad():
        torch.testing.assert_close(model.embed_chunked(x, window_frames=100), model.embed(x))
        torch.testing.assert_close(model.embed_chunked(x, window_frames=400), model.embed(x))
        chunked = model.embed_chunked(x, window_frames=CROP, batch_windows=3)
        starts = [0, 32, 64, 68]  # non-overlapping windows, then one ending at the last frame
        manual = torch.stack([model.embed(x[..., s:s + CROP]) for s in starts]).mean(dim=0)
        overlapping = model.embed_chunked(x, window_frames=CROP, hop_frames=16)
    assert chunked.shape == (2, 16) and overlapping.shape == (2, 16)
    torch.testing.assert_close(chunked, manual)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("pool", POOLS)
def test_shapes_and_attention_maps(variant, pool):
    model = tiny(variant, pool=pool)
    x = spectrogram(3, CROP)
    e, z = model(x)
    assert e.shape == (3, 16) and z.shape == (3, 8)
    torch.testing.assert_close(model.project(model.embed(x)), z)
    n = model.n_tokens(CROP) + (pool == "cls")
    att = model.attention_map(x)
    assert att.shape == (3, 4, n, n)
    torch.testing.assert_close(att.sum(-1), torch.ones(3, 4, n))


@pytest.mark.parametrize("variant", ["alibi2d", "rope2d", "sincos"])
def test_attention_map_is_the_attention_the_model_computes(variant):
    model = tiny(variant, pool="cls", attn_block=7)
    h, rope, bias_rows = model._inputs(spectrogram(2, CROP))
    attn = model.blocks[0].attn
    _, _, v = attn._qkv(h, rope)  # (B, H, N, Dh)
    mixed = (attn.attention_map(h, rope, bias_rows) @ v).transpose(1, 2).flatten(2)
    torch.testing.assert_close(attn(h, rope, bias_rows), attn.proj(mixed), atol=1e-5, rtol=1e-4)


# --- configuration ---------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [
    {"variant": "rope3d"},
    {"variant": "rope2d", "tokens": "1d"},
    {"variant": "alibi2d", "tokens": "1d"},
    {"variant": "alibi1d", "tokens": "2d"},
    {"variant": "rope1d", "tokens": "2d"},
    {"variant": "none", "tokens": "3d"},
    {"variant": "none", "pool": "max"},
    {"variant": "none", "dim": 30},
    {"variant": "alibi2d", "patch_freq": 5},
    {"variant": "rope2d", "dim": 24},  # head dim 6: not divisible between two rotary axes
])
def test_incompatible_configs_raise(overrides):
    with pytest.raises(ValueError):
        tiny(**overrides)


def test_token_override_for_none_and_sincos():
    assert tiny("sincos", tokens="2d").cfg.patch == (4, 4)
    assert tiny("none", tokens="2d").n_tokens(CROP) == 4 * 8
    assert tiny("rope2d", tokens="2d").n_tokens(CROP) == tiny("rope2d").n_tokens(CROP)


@pytest.mark.parametrize("shape", [(2, 15, CROP), (2, 16), (2, 16, 1)])
def test_bad_inputs_raise_clearly(shape):
    with pytest.raises(ValueError, match="expected|shorter"):
        tiny("rope1d").embed(torch.zeros(shape))


def test_default_model_is_small():
    model = Encoder(EncoderConfig())
    assert sum(p.numel() for p in model.parameters()) < 1_500_000
    assert model.n_tokens(400) == 50 and Encoder(EncoderConfig(variant="rope2d")).n_tokens(400) == 48


def test_meanstd_pools_the_mean_and_spread_of_the_tokens_over_time():
    model = tiny("rope1d", pool="meanstd")
    x = spectrogram(2, CROP)
    tokens = {}
    model.ln_f.register_forward_hook(lambda module, inputs, out: tokens.setdefault("h", out))
    e = model.embed(x)
    h = tokens["h"]  # (B, N, D)
    expected = model.to_embed(torch.cat([h.mean(dim=1), h.std(dim=1, correction=0)], dim=-1))
    torch.testing.assert_close(e, expected, atol=1e-4, rtol=1e-4)



# --- determinism and cost --------------------------------------------------------------------------

def test_same_seed_same_model_and_output():
    x = spectrogram(2, CROP)
    a, b = tiny("alibi2d", dropout=0.1), tiny("alibi2d", dropout=0.1)
    torch.testing.assert_close(a.state_dict(), b.state_dict())
    a.train(), b.train()
    torch.manual_seed(5)
    ya = a(x)[1]
    torch.manual_seed(5)
    torch.testing.assert_close(b(x)[1], ya, rtol=0, atol=0)


@pytest.mark.parametrize("variant, pool, frames", [("rope1d", "mean", CROP), ("alibi2d", "cls", 8 * CROP),
                                                   ("none", "cls", CROP + 3)])
def test_flops_match_pytorch_flop_counter(variant, pool, frames):
    model = tiny(variant, pool=pool, attn_block=16)
    # the counter misses CPU's fused SDPA kernel; the math backend spells attention out as matmuls
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        model(spectrogram(3, frames))
    assert model.flops(frames, batch=3) == counter.get_total_flops()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_neither_half_of_the_pooled_statistics_swamps_the_other(variant):
    """Statistics pooling: the mean and the std halves enter the embedding with comparable norms (the final
    LayerNorm puts every token at unit scale, so how much the tokens vary is a full half of the input to
    the embedding layer, not a rounding error beside the mean). README, "Real recordings" has the ratio of
    trained encoders."""
    model = Encoder(EncoderConfig(variant=variant)).eval()
    pooled = []
    model.to_embed.register_forward_hook(lambda module, args, out: pooled.append(args[0]))
    with torch.no_grad():
        model.embed(spectrogram(4, 400, mels=64))
    mean, std = pooled[0].chunk(2, dim=-1)
    ratio = std.norm(dim=-1) / mean.norm(dim=-1)
    assert bool(((ratio > 0.1) & (ratio < 10)).all()), ratio
