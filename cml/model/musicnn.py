"""The pretrained baseline: musicnn and VGG music taggers (Pons & Serra 2019), ported to PyTorch.

`musicnn` 0.1.0 (ISC licence, Music Technology Group, Universitat Pompeu Fabra) ships four TensorFlow-1
taggers trained with tag supervision: MTT_musicnn and MTT_vgg on MagnaTagATune (50 tags), MSD_musicnn and
MSD_vgg on the Million Song Dataset (50 tags). Its TensorFlow code pins numpy < 1.17, so the checkpoints
were converted once (`scripts/convert_musicnn.py`, run in a throwaway environment) into the PyTorch
modules below; the weights ship in `cml/weights/musicnn/` with the licence. A test checks the port against
the original's outputs on a fixed input, stored as a fixture.

Input is the models' own front end (`MUSICNN_MEL`: 16 kHz, 512-point FFT, hop 256, 96 Slaney mel bands,
log10(1 + 10000 mel)), in patches of `PATCH_FRAMES` (3 s, what they were trained on). A patch gives the
layers of `LAYERS`; `Musicnn.embed` returns one of them per patch, so `cml.embed.tracks` pools a track over
half-overlapping patches exactly as it pools the encoders' windows. Differences from the original
package, both deliberate: its extractor repeats the first patch's features for every later patch (a bug)
and reads only non-overlapping patches; and it rounds the mel power to float16 before the log, which
changes the inputs by about 1e-3 relative and is not reproduced.
"""
from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cml.audio.mel import MelConfig
from cml.errors import CmlError, one_line

MUSICNN_MEL = MelConfig(sample_rate=16000, n_fft=512, hop_length=256, n_mels=96, f_min=0.0, f_max=8000.0,
                        mel_scale="slaney", mel_norm="slaney", compression="log10_1p_1e4")
PATCH_FRAMES = 187  # 3 s: librosa.time_to_frames(3, sr=16000, n_fft=512, hop_length=256) + 1, the training input
PATCH_BATCH = 4  # patches per pass: the convolutions' maps of a few patches stay in cache (2x faster than 64 on a CPU)
MODELS = ("MTT_musicnn", "MSD_musicnn", "MTT_vgg", "MSD_vgg")
LAYERS = {  # per-patch vectors each architecture gives, with their sizes
    "musicnn": {"taggram": 50, "penultimate": 200, "mean_pool": 753, "max_pool": 753},
    "vgg": {"taggram": 50, "pool5": 256},
}
DEFAULT_LAYER = {"musicnn": "mean_pool", "vgg": "pool5"}  # of a model given without a layer (benchmarks/musicnn)
WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "musicnn"
BN_EPS = 1e-3  # tf.compat.v1.layers.batch_normalization's epsilon


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


def _max_of_bn_relu(x: Tensor, bn: nn.BatchNorm2d, pool) -> Tensor:
    """`pool(bn(relu(x)))` for a max-pool `pool` (the original's order), computed as bn(relu(.)) of the pooled
    map: relu and the norm (a*x + b per channel) are monotonic, and where a < 0 the max of a*x + b is
    a * min(x) + b. The same result, with the element-wise passes on a map 4-60x smaller."""
    increasing = (bn.weight >= 0)[None, :, None, None]
    return bn(F.relu(torch.where(increasing, pool(x), -pool(-x))))


class _ConvBlock(nn.Module):
    """conv -> relu -> batch norm, then max over the whole frequency axis."""

    def __init__(self, filters: int, kernel: tuple[int, int], time_pad: tuple[int, int]) -> None:
        super().__init__()
        self.conv, self.bn, self.time_pad = nn.Conv2d(1, filters, kernel), _bn(filters), time_pad

    def forward(self, x: Tensor) -> Tensor:  # (B, 1, T, F) -> (B, T, filters)
        x = self.conv(F.pad(x, (0, 0, *self.time_pad)))  # (B, filters, T, F')
        return _max_of_bn_relu(x, self.bn, lambda v: v.amax(dim=3, keepdim=True))[..., 0].transpose(1, 2)


class _MidConv(nn.Module):
    """A mid-end layer: a 7-frame convolution across every feature, relu, batch norm."""

    def __init__(self, features: int, filters: int) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, filters, (7, features)), _bn(filters)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, features) -> (B, T, filters)
        x = self.bn(F.relu(self.conv(F.pad(x[:, None], (0, 0, 3, 3)))))  # (B, filters, T, 1)
        return x[..., 0].transpose(1, 2)


class MusicnnNet(nn.Module):
    """musicnn: musically motivated front end (timbral and temporal filters), dense mid end, pooled back end."""

    def __init__(self, n_mels: int = 96, tags: int = 50, mid: int = 64, units: int = 200) -> None:
        super().__init__()
        self.bn_input = _bn(1)
        timbral = int(1.6 * 128)  # 204 filters, 7 frames x 40 % and 70 % of the mel bands
        self.timbral = nn.ModuleList(_ConvBlock(timbral, (7, int(r * n_mels)), (3, 3)) for r in (0.4, 0.7))
        temporal = int(1.6 * 32)  # 51 filters of 128, 64, 32 frames x 1 band, TensorFlow's "same" padding
        self.temporal = nn.ModuleList(_ConvBlock(temporal, (k, 1), ((k - 1) // 2, k // 2)) for k in (128, 64, 32))
        front = 2 * timbral + 3 * temporal
        self.mid = nn.ModuleList([_MidConv(front, mid), _MidConv(mid, mid), _MidConv(mid, mid)])
        pooled = 2 * (front + 3 * mid)
        self.bn_pool, self.dense, self.bn_dense = nn.BatchNorm1d(pooled, eps=BN_EPS), nn.Linear(pooled, units), \
            nn.BatchNorm1d(units, eps=BN_EPS)
        self.logits = nn.Linear(units, tags)

    def forward(self, x: Tensor) -> dict[str, Tensor]:  # (B, T, n_mels) -> layer name -> (B, size)
        x = self.bn_input(x[:, None])
        front = torch.cat([block(x) for block in (*self.timbral, *self.temporal)], dim=2)  # (B, T, 561)
        h1 = self.mid[0](front)
        h2 = self.mid[1](h1) + h1
        h3 = self.mid[2](h2) + h2
        features = torch.cat([front, h1, h2, h3], dim=2)  # (B, T, 753)
        max_pool, mean_pool = features.amax(dim=1), features.mean(dim=1)
        pooled = torch.stack([max_pool, mean_pool], dim=2).flatten(1)  # interleaved, as tf's flatten of (753, 2)
        penultimate = self.bn_dense(F.relu(self.dense(self.bn_pool(pooled))))
        return {"taggram": torch.sigmoid(self.logits(penultimate)), "penultimate": penultimate,
                "mean_pool": mean_pool, "max_pool": max_pool}


class VggNet(nn.Module):
    """The VGG-like baseline tagger: five 3x3 convolutions with max pooling, then one dense layer."""

    POOLS = ((4, 1), (2, 2), (2, 2), (2, 2), (4, 4))
    STRIDES = ((2, 2), (2, 2), (2, 2), (2, 2), (4, 4))

    def __init__(self, filters: int = 128, tags: int = 50) -> None:
        super().__init__()
        self.bn_input = _bn(1)
        self.convs = nn.ModuleList(nn.Conv2d(1 if i == 0 else filters, filters, 3, padding=1) for i in range(5))
        self.bns = nn.ModuleList(_bn(filters) for _ in range(5))
        self.logits = nn.Linear(2 * filters, tags)  # pool5 of a 187 x 96 patch is 2 x 1 x filters

    def forward(self, x: Tensor) -> dict[str, Tensor]:  # (B, 187, 96) -> layer name -> (B, size)
        x = self.bn_input(x[:, None])
        for conv, bn, pool, stride in zip(self.convs, self.bns, self.POOLS, self.STRIDES):
            x = _max_of_bn_relu(conv(x), bn, lambda v: F.max_pool2d(v, pool, stride))
        pool5 = x.permute(0, 2, 3, 1).flatten(1)  # (B, T', F', C) order, as tf's flatten
        return {"taggram": torch.sigmoid(self.logits(pool5)), "pool5": pool5}


@dataclass(frozen=True)
class MusicnnConfig:
    """Which pretrained model and which of its layers (params.yaml section `musicnn`, stage embed_musicnn)."""

    model: str = "MSD_musicnn"  # one of MODELS; the default with mean_pool, z-scored (benchmarks/musicnn)
    layer: Optional[str] = None  # one of LAYERS[arch]; None: DEFAULT_LAYER of the model's architecture

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise CmlError(f"unknown musicnn model {self.model!r}; one of {', '.join(MODELS)}")
        if self.layer is None:
            object.__setattr__(self, "layer", DEFAULT_LAYER[self.arch])
        if self.layer not in LAYERS[self.arch]:
            raise CmlError(f"{self.model} has no layer {self.layer!r}; one of {', '.join(LAYERS[self.arch])}")

    @property
    def arch(self) -> str:
        return self.model.split("_")[1]

    @property
    def n_mels(self) -> int:
        return MUSICNN_MEL.n_mels

    @property
    def embed_dim(self) -> int:
        return LAYERS[self.arch][self.layer]

    @classmethod
    def parse(cls, spec: str) -> "MusicnnConfig":
        """`MODEL[:LAYER]` (e.g. `MTT_musicnn:penultimate`); empty: the defaults."""
        model, _, layer = spec.partition(":")
        return cls(model or cls.model, layer or None)


class Musicnn(nn.Module):
    """A pretrained tagger as a track encoder: `embed` maps (B, 96, T) log-mel patches to (B, embed_dim)."""

    def __init__(self, cfg: MusicnnConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = MusicnnNet() if cfg.arch == "musicnn" else VggNet()

    def layers(self, x: Tensor) -> dict[str, Tensor]:
        """Every layer of `LAYERS` for (B, n_mels, T) patches; a patch shorter than `PATCH_FRAMES` is
        repeated to that length, as the models were trained."""
        if x.shape[-1] < PATCH_FRAMES:
            x = x.repeat(1, 1, -(-PATCH_FRAMES // x.shape[-1]))[..., :PATCH_FRAMES]
        if self.cfg.arch == "vgg" and x.shape[-1] != PATCH_FRAMES:
            raise ValueError(f"the VGG taggers take patches of exactly {PATCH_FRAMES} frames, got {x.shape[-1]}")
        return self.net(x.transpose(1, 2))

    def embed(self, x: Tensor) -> Tensor:
        """(B, n_mels, T) -> (B, embed_dim), `PATCH_BATCH` patches per pass."""
        return torch.cat([self.layers(part)[self.cfg.layer] for part in x.split(PATCH_BATCH)])


def weights_path(model: str) -> Path:
    return WEIGHTS / f"{model}.npz"


def weights_sha256(model: str) -> str:
    return hashlib.sha256(weights_path(model).read_bytes()).hexdigest()


def load_musicnn(cfg: MusicnnConfig | str = "", device: str | torch.device = "cpu") -> Musicnn:
    """The pretrained model in eval mode; a missing or corrupt weight file is a one-line error, never a model
    left with random weights (every parameter and statistic must come from the file, strictly)."""
    cfg = MusicnnConfig.parse(cfg) if isinstance(cfg, str) else cfg
    path = weights_path(cfg.model)
    model = Musicnn(cfg)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            state = {name: torch.from_numpy(arrays[name]) for name in arrays.files}
        model.net.load_state_dict(state, strict=True)
    except FileNotFoundError:
        raise CmlError(f"musicnn weights not found: {path} (they ship with cml; reinstall it)") from None
    except (OSError, ValueError, RuntimeError, KeyError, EOFError, zipfile.BadZipFile) as err:  # damaged or foreign
        raise CmlError(f"musicnn weights unusable: {path}: {type(err).__name__}: {one_line(err)}") from None
    return model.to(device).eval()
