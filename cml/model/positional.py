"""Positional schemes for the spectrogram Transformer, each small and on its own.

Every scheme reads token *coordinates* `pos` of shape (n, A): A = 1 holds the time index of 1-D
tokens, A = 2 holds (frequency, time) indices of 2-D patches. So the 1-D and 2-D variants of a scheme
are the same code fed different coordinates, and any length works because nothing is a learned table.

- `SinCosEmbedding`: absolute sinusoidal embedding (Vaswani et al. 2017), (n, dim), added to tokens;
  with A = 2 the channels are split between the axes (as in MAE's 2-D sin-cos).
- `AlibiBias`: ALiBi (Press et al. 2022), additive attention bias -m_h * distance, (heads, i, j);
  with A = 2 the distance is Euclidean over the patch grid (CROMA's 2D-ALiBi, Fuller et al. 2023).
- `RotaryEmbedding` + `apply_rotary`: RoPE (Su et al. 2021); with A = 2 axial RoPE, half of each head's
  rotary dimensions turn with the frequency index and half with the time index (RoPE-ViT, Heo et al. 2024).
"""

import logging
import math

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


def _axis_frequencies(dim: int, theta: float) -> Tensor:
    """The geometric frequencies 1 / theta^(2i/dim), i < dim/2, shared by sin-cos and RoPE."""
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)


class SinCosEmbedding(nn.Module):
    """Fixed sinusoidal position embedding, computed for any number of tokens."""

    def __init__(self, dim: int, axes: int, theta: float = 10000.0):
        super().__init__()
        if dim % (2 * axes):
            raise ValueError(f"sincos: dim {dim} must be divisible by 2 * axes = {2 * axes}")
        self.register_buffer("inv_freq", _axis_frequencies(dim // axes, theta), persistent=False)

    def forward(self, pos: Tensor) -> Tensor:
        """(n, A) coordinates -> (n, dim): per axis [sin(p w), cos(p w)], axes concatenated."""
        angles = pos.float()[:, :, None] * self.inv_freq  # (n, A, dim / 2A)
        return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1)  # (n, dim)


def alibi_slopes(heads: int) -> Tensor:
    """ALiBi head slopes: the geometric sequence 2^(-8/H), 2^(-16/H), ..., 2^(-8) for H a power of two.

    For other H, Press et al. take the slopes of the nearest lower power of two, 2^k, and fill the rest with
    every other slope of 2^(k+1) heads, so slopes stay in the same range instead of being stretched.
    """
    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(heads).is_integer():
        slopes = power_of_two(heads)
    else:
        lower = 2 ** math.floor(math.log2(heads))
        slopes = power_of_two(lower) + power_of_two(2 * lower)[0::2][: heads - lower]
    return torch.tensor(slopes, dtype=torch.float32)


class AlibiBias(nn.Module):
    """ALiBi: a fixed penalty -m_h * distance on attention logits, no position added to the tokens.

    `axis_scale` stretches the coordinates before the distance is taken. CROMA's 2D-ALiBi is isotropic
    (scale 1 on both axes); an isotropic distance is unchanged when the patch grid is transposed, so such a
    model cannot tell a frequency offset from a time offset. A frequency scale != 1 breaks that symmetry.
    """

    def __init__(self, heads: int, axis_scale: tuple[float, ...] = (1.0,)):
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(heads), persistent=False)
        self.register_buffer("axis_scale", torch.tensor(axis_scale, dtype=torch.float32), persistent=False)

    def forward(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """(i, A) query and (j, A) key coordinates -> (heads, i, j) additive bias.

        The caller passes blocks of query rows: the full (heads, n, n) bias of a 20-minute track
        (~30k tokens) would need 4 * 30k^2 * 4 B = 14 GB in fp32.
        """
        p = 1.0 if q_pos.shape[1] == 1 else 2.0  # in 1-D both are |i - j|; p=1 gives it without a sqrt
        dist = torch.cdist(q_pos.float() * self.axis_scale, k_pos.float() * self.axis_scale, p=p,
                           compute_mode="donot_use_mm_for_euclid_dist")  # (i, j), exact differences
        return dist * -self.slopes[:, None, None]  # (H, i, j)


class RotaryEmbedding(nn.Module):
    """RoPE angles for each token; the head dimension is split evenly between the A axes (axial RoPE)."""

    def __init__(self, head_dim: int, axes: int, theta: float = 10000.0):
        super().__init__()
        if head_dim % (2 * axes):
            raise ValueError(f"rope: head dim {head_dim} must be divisible by 2 * axes = {2 * axes}")
        self.register_buffer("inv_freq", _axis_frequencies(head_dim // axes, theta), persistent=False)

    def forward(self, pos: Tensor) -> Tensor:
        """(n, A) coordinates -> (n, head_dim) angles, laid out for `rotate_half`."""
        angles = (pos.float()[:, :, None] * self.inv_freq).flatten(1)  # (n, head_dim / 2): axis 0, then axis 1
        return torch.cat([angles, angles], dim=-1)  # pair (c, c + head_dim/2) turns by angles[c]


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dimension: a 90-degree turn of each pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(t: Tensor, angles: Tensor) -> Tensor:
    """Rotate queries or keys (..., n, head_dim) by (n, head_dim) angles; fp32 math, result in t's dtype.

    fp32 because under autocast q and k are bf16/fp16, and rotating in those would round the rotation.
    """
    tf = t.float()
    return (tf * angles.cos() + rotate_half(tf) * angles.sin()).to(t.dtype)
