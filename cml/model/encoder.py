"""A small Transformer encoder over log-mel spectrograms, with one positional scheme chosen by name.

Read top to bottom: the config and the variant registry, the tokenizer, attention, MLP, block, the
projection head, and the `Encoder` that ties them together.

Input (B, n_mels, frames) log-mels, 64 bins at a 10 ms hop by default. Tokens are either 1-D (one token
per `frames_per_token` frames, all mel bins) or 2-D (patch_freq x patch_time patches). The defaults give
both the same patch size (64 x 8 = 16 x 32 = 512 values) and about the same number of tokens (50 and 48
for a 4 s crop), so variants differ in position handling, not in cost. Frames past the last whole token
are trimmed (less than one token: at most 70 ms with 1-D, 310 ms with 2-D tokens), so there is no padding
and no padding mask; a batch holds inputs of equal length. 80 ms tokens and a 2x MLP cost a third of
40 ms tokens and a 4x MLP per clip, and on a fixed CPU budget three times the steps taught the encoders
more than the finer tokens did.

Pooling: "meanstd" (the default) concatenates the mean and the standard deviation of the tokens over the
input, the statistics pooling of x-vectors (Snyder et al. 2018): how much the music changes over a track
(steady chorale chords against running fiddle notes) is a style cue a mean alone averages away. "mean"
averages the tokens (a document mean). "cls" prepends a learned token whose output is the embedding; it
has no place in time or frequency, so it gets no sin-cos embedding, no RoPE rotation (angle 0, as
RoPE-ViT leaves the class token unrotated) and zero ALiBi bias to and from every token. For RoPE that
means it sits at position 0, so against far tokens of a long input it meets offsets it never saw in
training; the pooled statistics have no such issue.
"""

import logging
import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cml.model.positional import AlibiBias, RotaryEmbedding, SinCosEmbedding, apply_rotary

log = logging.getLogger(__name__)

# variant name -> (tokenizer, positional scheme)
VARIANTS: dict[str, tuple[str, str]] = {
    "none": ("1d", "none"),  # control: no position information at all
    "sincos": ("1d", "sincos"),  # absolute sinusoidal, added to the tokens
    "alibi1d": ("1d", "alibi"),  # bias -m_h * |i - j| over time (Press et al. 2022)
    "alibi2d": ("2d", "alibi"),  # bias -m_h * distance over the (frequency, time) grid (CROMA)
    "rope1d": ("1d", "rope"),  # rotary over time (Su et al. 2021)
    "rope2d": ("2d", "rope"),  # axial rotary: half the dims by frequency, half by time (Heo et al. 2024)
}
FREE_TOKENS = ("none", "sincos")  # variants whose tokenizer `EncoderConfig.tokens` may override

BiasRows = Callable[[int, int], Tensor]  # (start, end) -> (H, end - start, N): rows of the attention bias


POSITIVE_FIELDS = ("n_mels", "frames_per_token", "patch_freq", "patch_time", "dim", "depth", "heads", "mlp_ratio",
                   "embed_dim", "proj_dim", "attn_block")  # sizes and counts: 0 would divide by zero or build nothing


@dataclass
class EncoderConfig:
    variant: str = "rope1d"  # positional scheme by name, a key of VARIANTS
    tokens: Optional[str] = None  # "1d" | "2d": tokenizer override, only for "none" and "sincos"
    n_mels: int = 64  # mel bins of the input
    frames_per_token: int = 8  # 1-D tokens: frames per token (80 ms at a 10 ms hop), all mel bins
    patch_freq: int = 16  # 2-D tokens: mel bins per patch (64 bins -> 4 frequency rows)
    patch_time: int = 32  # 2-D tokens: frames per patch (320 ms)
    dim: int = 128  # token width
    depth: int = 4  # Transformer blocks
    heads: int = 4  # attention heads (head dim = dim / heads = 32)
    mlp_ratio: int = 2  # MLP hidden width = mlp_ratio * dim
    dropout: float = 0.0  # attention, residual and token dropout
    pool: str = "meanstd"  # "meanstd" (mean and std of the tokens) | "mean" (document mean) | "cls"
    embed_dim: int = 128  # track embedding size
    proj_dim: int = 64  # projection head output, seen only by the contrastive loss
    rope_theta: float = 10000.0  # RoPE base; the slowest pair turns once in ~35k tokens (23 min, rope1d)
    alibi_freq_scale: float = 2.0  # alibi2d: a frequency-patch step counts as this many time steps;
    #   1.0 is CROMA's isotropic distance, which cannot tell frequency from time (see AlibiBias)
    attn_block: int = 1024  # ALiBi: query rows per attention call, so at most H * block * N bias floats
    bias_cache_mb: int = 512  # ALiBi: build the whole bias once and share it across layers up to this size
    #   (4 heads: ~5.8k tokens, 4 min of audio); longer inputs rebuild it block by block in each layer

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose one of {sorted(VARIANTS)}")
        if self.tokens not in (None, "1d", "2d"):
            raise ValueError(f"tokens must be '1d', '2d' or None, got {self.tokens!r}")
        if self.tokens not in (None, VARIANTS[self.variant][0]) and self.variant not in FREE_TOKENS:
            raise ValueError(f"variant {self.variant!r} needs {VARIANTS[self.variant][0]} tokens, "
                             f"got tokens={self.tokens!r}")
        if self.pool not in ("mean", "meanstd", "cls"):
            raise ValueError(f"pool must be 'mean', 'meanstd' or 'cls', got {self.pool!r}")
        for name in POSITIVE_FIELDS:
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.token_kind == "2d" and self.n_mels % self.patch_freq:
            raise ValueError(f"n_mels {self.n_mels} is not divisible by patch_freq {self.patch_freq}")

    @property
    def token_kind(self) -> str:
        return self.tokens or VARIANTS[self.variant][0]

    @property
    def scheme(self) -> str:
        return VARIANTS[self.variant][1]

    @property
    def patch(self) -> tuple[int, int]:
        """(mel bins, frames) per token; a 1-D token is a patch over all mel bins."""
        if self.token_kind == "1d":
            return self.n_mels, self.frames_per_token
        return self.patch_freq, self.patch_time


class PatchEmbed(nn.Module):
    """Cut (B, n_mels, T) into patches and project each linearly; trailing partial patches are trimmed.

    A reshape plus one Linear (the same as a Conv2d with stride = kernel) keeps it a plain matmul.
    Tokens are ordered time-major, all frequency rows of one time step together.
    """

    def __init__(self, patch_freq: int, patch_time: int, dim: int):
        super().__init__()
        self.pf, self.pt = patch_freq, patch_time
        self.linear = nn.Linear(patch_freq * patch_time, dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        """(B, M, T) -> tokens (B, n_freq * n_time, dim), n_freq, n_time."""
        B, M, T = x.shape
        nf, nt = M // self.pf, T // self.pt
        x = x[:, :, : nt * self.pt].reshape(B, nf, self.pf, nt, self.pt)
        x = x.permute(0, 3, 1, 2, 4).reshape(B, nt * nf, self.pf * self.pt)  # (B, N, pf * pt)
        return self.linear(x), nf, nt


def grid_coordinates(n_freq: int, n_time: int, axes: int, device: torch.device) -> Tensor:
    """Coordinates of the time-major patch grid: (N, 1) time index, or (N, 2) (frequency, time)."""
    t, f = torch.meshgrid(torch.arange(n_time, device=device), torch.arange(n_freq, device=device),
                          indexing="ij")
    coords = t.reshape(-1, 1) if axes == 1 else torch.stack([f.reshape(-1), t.reshape(-1)], dim=-1)
    return coords.float()


class Attention(nn.Module):
    """Multi-head self-attention through SDPA; RoPE rotates q and k, ALiBi enters as a float mask."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.heads, self.block, self.dropout = cfg.heads, cfg.attn_block, cfg.dropout
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def _qkv(self, x: Tensor, rope: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, N, Dh)
        if rope is not None:
            q, k = apply_rotary(q, rope), apply_rotary(k, rope)
        return q, k, v

    def forward(self, x: Tensor, rope: Optional[Tensor] = None, bias_rows: Optional[BiasRows] = None) -> Tensor:
        q, k, v = self._qkv(x, rope)
        p = self.dropout if self.training else 0.0
        if bias_rows is None:  # no mask: SDPA's fused kernels never build the (N, N) scores
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, H, N, Dh)
        else:  # query rows in blocks, so only an (H, block, N) slice of the bias exists at a time
            rows = []
            for s in range(0, q.shape[2], self.block):
                # 4-D: CPU's fused kernel refuses a 3-D mask and falls back to math that builds (N, N) scores
                mask = bias_rows(s, s + self.block).to(q.dtype)[None]  # (1, H, block, N)
                rows.append(F.scaled_dot_product_attention(q[:, :, s:s + self.block], k, v, attn_mask=mask,
                                                           dropout_p=p))
            y = torch.cat(rows, dim=2)
        B, H, N, Dh = y.shape
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, N, H * Dh)))

    def attention_map(self, x: Tensor, rope: Optional[Tensor] = None,
                      bias_rows: Optional[BiasRows] = None) -> Tensor:
        """softmax(q k^T / sqrt(d) + bias) written out, (B, H, N, N): for plots of short inputs only."""
        q, k, _ = self._qkv(x, rope)
        logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, N, N)
        if bias_rows is not None:
            logits = logits + bias_rows(0, q.shape[2])
        return logits.softmax(dim=-1)


class MLP(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.dim, cfg.mlp_ratio * cfg.dim)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.dim, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(cfg.dim), Attention(cfg)
        self.ln2, self.mlp = nn.LayerNorm(cfg.dim), MLP(cfg)

    def forward(self, x: Tensor, rope: Optional[Tensor] = None, bias_rows: Optional[BiasRows] = None) -> Tensor:
        x = x + self.attn(self.ln1(x), rope, bias_rows)
        return x + self.mlp(self.ln2(x))


class ProjectionHead(nn.Module):
    """SimCLR's MLP head: the loss sees its output, downstream tasks use the embedding before it."""

    def __init__(self, embed_dim: int, proj_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.GELU(), nn.Linear(embed_dim, proj_dim))

    def forward(self, e: Tensor) -> Tensor:
        return self.net(e)


def chunk_windows(x: Tensor, window_frames: int, hop_frames: Optional[int] = None) -> Tensor:
    """(B, M, T) -> (B, W, M, min(T, window)): the windows of `Encoder.embed_chunked`, one every `hop_frames`
    (default: no overlap) and one more ending at the last frame; the whole input when it fits one window."""
    T = x.shape[-1]
    if T <= window_frames:
        return x[:, None]
    hop = hop_frames or window_frames
    starts = list(range(0, T - window_frames + 1, hop))
    if starts[-1] + window_frames < T:
        starts.append(T - window_frames)
    return torch.stack([x[..., s:s + window_frames] for s in starts], dim=1)


class Encoder(nn.Module):
    """Log-mel spectrogram -> track embedding (`embed`) -> projection for the loss (`project`)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.axes = axes = 1 if cfg.token_kind == "1d" else 2
        self.patch = PatchEmbed(*cfg.patch, cfg.dim)
        self.sincos = SinCosEmbedding(cfg.dim, axes) if cfg.scheme == "sincos" else None
        self.rope = RotaryEmbedding(cfg.dim // cfg.heads, axes, cfg.rope_theta) if cfg.scheme == "rope" else None
        alibi_scale = (1.0,) if axes == 1 else (cfg.alibi_freq_scale, 1.0)
        self.alibi = AlibiBias(cfg.heads, alibi_scale) if cfg.scheme == "alibi" else None
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if cfg.pool == "cls" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.to_embed = nn.Linear(2 * cfg.dim if cfg.pool == "meanstd" else cfg.dim, cfg.embed_dim)
        self.head = ProjectionHead(cfg.embed_dim, cfg.proj_dim)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: residual projections shrink with depth
            if name.startswith("blocks.") and name.endswith("proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.depth))
        if self.cls is not None:
            nn.init.normal_(self.cls, std=0.02)
        log.info("encoder %s (%s tokens): %.2fM parameters", cfg.variant, cfg.token_kind,
                 sum(p.numel() for p in self.parameters()) / 1e6)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def n_tokens(self, frames: int) -> int:
        """Patch tokens for an input of `frames` frames (the CLS token not counted)."""
        pf, pt = self.cfg.patch
        return (self.cfg.n_mels // pf) * (frames // pt)

    def _inputs(self, x: Tensor) -> tuple[Tensor, Optional[Tensor], Optional[BiasRows]]:
        """Tokens entering the first block, plus the RoPE angles or the ALiBi bias rows they share."""
        if x.ndim != 3 or x.shape[1] != self.cfg.n_mels:
            raise ValueError(f"expected (batch, {self.cfg.n_mels} mels, frames), got {tuple(x.shape)}")
        if x.shape[2] < self.cfg.patch[1]:
            raise ValueError(f"input of {x.shape[2]} frames is shorter than one token ({self.cfg.patch[1]})")
        h, n_freq, n_time = self.patch(x)  # (B, N, D)
        pos = grid_coordinates(n_freq, n_time, self.axes, x.device)  # (N, A)
        if self.sincos is not None:
            h = h + self.sincos(pos).to(h.dtype)
        c = 0 if self.cls is None else 1
        if self.cls is not None:
            h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1)  # (B, 1 + N, D)
        rope = F.pad(self.rope(pos), (0, 0, c, 0)) if self.rope is not None else None  # CLS: angle 0
        bias_rows = self._bias_rows(pos, c) if self.alibi is not None else None
        return self.drop(h), rope, bias_rows

    def _bias_rows(self, pos: Tensor, c: int) -> BiasRows:
        """ALiBi bias rows for c CLS tokens then the patches at `pos`; built whole if within bias_cache_mb."""
        rows = partial(self._alibi_rows, pos, c)
        n = c + len(pos)
        if self.cfg.heads * n * n * 4 > self.cfg.bias_cache_mb * 2**20:
            return rows  # each layer rebuilds it, one block of query rows at a time
        bias = rows(0, n)  # (H, n, n), built once and shared by all layers
        return lambda start, end: bias[:, start:end]

    def _alibi_rows(self, pos: Tensor, c: int, start: int, end: int) -> Tensor:
        """Rows start:end of the (H, c + N, c + N) ALiBi bias; the c CLS rows and columns are 0."""
        rows = self.alibi(pos[max(start - c, 0):max(end - c, 0)], pos)  # (H, rows, N) patch to patch
        return F.pad(rows, (c, 0, c if start == 0 else 0, 0))

    def embed(self, x: Tensor) -> Tensor:
        """(B, n_mels, frames) -> (B, embed_dim) track embedding, any number of frames, in one pass."""
        h, rope, bias_rows = self._inputs(x)
        for block in self.blocks:
            h = block(h, rope, bias_rows)
        h = self.ln_f(h)
        if self.cls is not None:
            return self.to_embed(h[:, 0])
        if self.cfg.pool == "meanstd":
            return self.to_embed(torch.cat([h.mean(dim=1), h.std(dim=1, correction=0)], dim=-1))
        return self.to_embed(h.mean(dim=1))

    def project(self, e: Tensor) -> Tensor:
        """(B, embed_dim) -> (B, proj_dim): the space the contrastive loss works in."""
        return self.head(e)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        e = self.embed(x)
        return e, self.project(e)

    def embed_chunked(self, x: Tensor, window_frames: int, hop_frames: Optional[int] = None,
                      batch_windows: int = 64) -> Tensor:
        """Mean of the embeddings of fixed windows: to compare with one pass, and when memory is short.

        Windows start every `hop_frames` (default: `window_frames`, no overlap); if they stop short of the
        end, one more window ends at the last frame, so every frame is seen. An input no longer than a
        window is a single window, identical to `embed`. Windows go through in batches of `batch_windows`.
        """
        windows = chunk_windows(x, window_frames, hop_frames)  # (B, W, M, window)
        B, W = windows.shape[:2]
        e = torch.cat([self.embed(w) for w in windows.flatten(0, 1).split(batch_windows)])  # (B * W, E)
        return e.view(B, W, -1).mean(dim=1)

    def attention_map(self, x: Tensor) -> Tensor:
        """Last layer's attention probabilities (B, H, N, N), CLS first if present; for plots only."""
        h, rope, bias_rows = self._inputs(x)
        for block in self.blocks[:-1]:
            h = block(h, rope, bias_rows)
        last = self.blocks[-1]
        return last.attn.attention_map(last.ln1(h), rope, bias_rows)

    def flops(self, frames: int, batch: int = 1) -> int:
        """Analytic FLOPs (2 per multiply-add) of `forward` on (batch, n_mels, frames); matmuls only.

        Counts the patch embedding, q/k/v, the two attention matmuls, the output projection, the MLP and
        the heads; norms, softmax and position schemes are left out (a few percent). A training step is
        about 3x this (the backward pass costs twice the forward).
        """
        cfg, (pf, pt) = self.cfg, self.cfg.patch
        n_patch = self.n_tokens(frames)
        n = n_patch + (self.cls is not None)
        d, hidden = cfg.dim, cfg.mlp_ratio * cfg.dim
        layer = 2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d + 2 * 2 * n * d * hidden
        pooled = 2 * d if cfg.pool == "meanstd" else d
        heads = 2 * pooled * cfg.embed_dim + 2 * cfg.embed_dim * cfg.embed_dim + 2 * cfg.embed_dim * cfg.proj_dim
        return batch * (2 * n_patch * pf * pt * d + cfg.depth * layer + heads)
