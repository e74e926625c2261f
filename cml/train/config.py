"""The training recipe's settings (TrainConfig: its defaults are the recipe) and how a study's params.yaml
sets them.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from cml.audio.mel import MelConfig
from cml.errors import UsageError
from cml.model.encoder import EncoderConfig
from cml.params import build, load_params, parse_section
from cml.train.augment import AugmentConfig
from cml.train.losses import KMEANS_MODES

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CACHE_MODES = ("auto", "memory", "disk")
RECIPES = ("auto", "renderings", "recordings")
# keys that may change between an interrupted run and its resumption without changing the results
RESUME_FREE_KEYS = ("num_workers",)


@dataclass
class TrainConfig:
    variant: str = "rope1d"  # positional variant, a key of cml.model.encoder.VARIANTS
    model: dict = field(default_factory=dict)  # EncoderConfig overrides (the `model` section): dim, depth, heads, ...
    frontend: dict = field(default_factory=dict)  # MelConfig overrides (the `frontend` section): the log-mel input
    crop_seconds: float = 4.0  # length of each view (400 frames, 50 tokens at the model defaults)
    batch_size: int = 32  # pairs per step (2x views, 2N - 2 negatives each); global over all processes
    epochs: int = 18  # 36 steps an epoch on the default corpus: 648 steps in all
    crops_per_track: int = 8  # pairs drawn per training track (or piece) per epoch ...
    min_steps: int = 648  # ... but at least this many steps in all (a 100-track library still learns) ...
    max_steps: int = 6000  # ... and at most this many (a 10k-track library: ~20 min on 2 CPU cores)
    lr: float = 3e-4  # peak learning rate (AdamW); 1e-3 stalled the loss on the default corpus
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0  # linear warm-up from 0, in epochs (converted to steps)
    grad_clip: float = 1.0  # max gradient norm; 0 turns clipping off
    temperature: float = 0.1  # NT-Xent temperature
    kmeans_lambda: float = 0.1  # weight of the k-means term (Deep Clustering Network style); 0 turns it off
    kmeans_k: int = 7  # number of centroids (the default corpus has 7 styles)
    kmeans_mode: str = "minibatch"  # "minibatch" (Sculley 2010 updates) | "learned" (trained by gradient)
    augment: dict = field(default_factory=dict)  # AugmentConfig overrides; {"off": true} turns all off
    recipe: str = "auto"  # where positives come from: "renderings" | "recordings" | "auto" (see `choose_recipe`)
    pair_by_piece: bool = True  # renderings: the two views come from two renderings of a piece
    view_shift_seconds: Optional[float] = 0.5  # renderings: the two views at the same relative position up to
    #   +-0.5 s (the same notes with other instruments); None: independent positions
    cache: str = "auto"  # "memory": whole-track log-mels in RAM; "disk": read each crop; "auto": memory if it fits
    cache_mb: int = 2048  # the memory budget of "auto"
    norm_crops: int = 64  # random training crops measured for the log-mel mean and std
    patience: int = 0  # stop once the val NT-Xent has not improved for this many epochs (0: run every epoch)
    knn_k: int = 5  # k of the per-epoch val k-NN accuracy (cosine)
    num_workers: int = 0  # DataLoader workers; 0 loads in the main process (best on 2 cores with the cache)
    seed: int = 0
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    precision: str = "auto"  # "auto": bf16 (or fp16) autocast on CUDA, fp32 on CPU; or fp32 | bf16 | fp16

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return build(cls, d, "'train'")

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {self.cache!r}")
        if self.kmeans_mode not in KMEANS_MODES:
            raise ValueError(f"kmeans_mode must be one of {KMEANS_MODES}, got {self.kmeans_mode!r}")
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {self.recipe!r}")
        if self.batch_size < 2 or self.epochs < 1 or self.crops_per_track < 1 or self.crop_seconds <= 0:
            raise ValueError("need batch_size >= 2, epochs >= 1, crops_per_track >= 1 and crop_seconds > 0")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0 epochs (0: no early stop), got {self.patience}")
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"need 1 <= min_steps <= max_steps, got {self.min_steps} and {self.max_steps}")
        self.encoder_config()  # fails early on a bad variant, model or frontend key
        self.augment_config()

    def mel_config(self) -> MelConfig:
        return build(MelConfig, self.frontend, "'frontend'")

    def encoder_config(self) -> EncoderConfig:
        if "variant" in self.model:
            raise ValueError("the variant is not a model key: the study's variants (or train.variant) choose it")
        values = {"n_mels": self.mel_config().n_mels, **self.model, "variant": self.variant}
        return build(EncoderConfig, values, "'model'")

    def augment_config(self) -> AugmentConfig:
        d = dict(self.augment)
        if d.pop("off", False):
            return AugmentConfig.off()
        return AugmentConfig.from_dict(d)


def config_from_params(params_file: str | os.PathLike, variant: Optional[str] = None,
                       seed: Optional[int] = None, section: str = "train",
                       init: Optional[str | os.PathLike] = None) -> TrainConfig:
    """The TrainConfig of a study: the `train` section (or `pretrain`, the shipped encoder's recipe), the
    architecture of `model`, the front end of `frontend`, and the variant and seed of one run (the study's matrix).
    Fine-tuning (`init`: a checkpoint, or `pretrained`) keeps the checkpoint's variant, architecture and front
    end instead: its weights fit no other."""
    recipe = load_params(params_file, section)
    misplaced = sorted({"model", "frontend"} & set(recipe))
    if misplaced:
        raise UsageError(f"{params_file}: {misplaced} in the '{section}' section: they are sections of their own")
    values = {**recipe, "model": load_params(params_file, "model"), "frontend": load_params(params_file, "frontend")}
    values.update({k: v for k, v in (("variant", variant), ("seed", seed)) if v is not None})
    if init is not None:
        values.update(architecture_of(init))
    return parse_section(params_file, section, TrainConfig.from_dict, values)


def architecture_of(checkpoint: str | os.PathLike) -> dict:
    """The variant, model and frontend values of a checkpoint (or `pretrained`), as a TrainConfig takes them."""
    from cml.model.checkpoint import checkpoint_path, read_checkpoint

    state = read_checkpoint(checkpoint_path(checkpoint))
    model = dict(state["encoder_config"])
    log.info("fine-tuning %s: its variant %s, architecture and front end", checkpoint, model["variant"])
    return {"variant": model.pop("variant"), "model": model, "frontend": dict(state["mel_config"])}
