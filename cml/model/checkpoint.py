"""Training checkpoints: one plain dict per file, and the encoder rebuilt from it alone.

A checkpoint (`torch.save` of a dict, written atomically so a crash never leaves half a file) holds:

    format         1
    model          Encoder state dict
    optimizer      AdamW state dict (None when saved without one)
    scheduler      LR scheduler state dict (or None)
    epoch, step    epochs and optimizer steps completed
    encoder_config EncoderConfig as a dict: the architecture comes from here, never from arguments
    mel_config     MelConfig as a dict: the front end the model was trained on
    norm           {"mean": float, "std": float}: log-mel standardisation (the model does not normalise)
    train_config   the TrainConfig as a dict
    metrics        per-epoch metrics so far ({"history": [...], ...}), so a resumed run logs the same
    rng_state      everything needed to continue the random streams bit for bit
    ...            trainer extras: kmeans (centroid state or None), scaler (fp16 GradScaler state)

Only tensors, numbers, strings, lists and dicts are stored, so `torch.load(weights_only=True)` reads it.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from torch import Tensor

from cml.audio.mel import MelConfig
from cml.errors import CmlError, UsageError, one_line
from cml.model.encoder import Encoder, EncoderConfig

log = logging.getLogger(__name__)

FORMAT = 1
PRETRAINED = "pretrained"  # the MODEL name of the encoder shipped with cml (`cml pretrain` made it)
PRETRAINED_CHECKPOINT = Path(__file__).resolve().parents[1] / "weights" / "pretrained" / "encoder.pt"


def checkpoint_path(spec: str | os.PathLike) -> str | os.PathLike:
    """The file a checkpoint argument names: `pretrained` is the shipped encoder (a one-line error when this
    checkout lacks it), anything else a path, returned as given."""
    if str(spec) != PRETRAINED:
        return spec
    if not PRETRAINED_CHECKPOINT.is_file():
        raise UsageError(f"the pretrained encoder is missing ({PRETRAINED_CHECKPOINT}): "
                         "restore it with git checkout, or make it with make pretrain")
    return PRETRAINED_CHECKPOINT


@dataclass
class Normalizer:
    """Standardise log-mels with fixed constants measured once on training crops.

    Fixed scalars (not per-input statistics) keep absolute loudness and spectral balance in the
    input, and make a whole track and its crops go through the same affine map.
    """

    mean: float = 0.0
    std: float = 1.0

    def __call__(self, logmel: Tensor) -> Tensor:
        return (logmel - self.mean) / self.std

    def to_dict(self) -> dict[str, float]:
        return {"mean": float(self.mean), "std": float(self.std)}

    @classmethod
    def measure(cls, logmels: Iterable[Tensor]) -> "Normalizer":
        """Mean and std of every log-mel value of a sample: the one estimate, for trained (random training
        crops) and untrained encoders (the first seconds of some tracks) alike. An empty sample, or one
        without spread, standardises nothing it cannot measure."""
        values = [x.double().flatten() for x in logmels]
        if not values or not sum(len(v) for v in values):
            return cls()
        x = torch.cat(values)
        std = float(x.std()) if len(x) > 1 else 0.0
        return cls(float(x.mean()), std if std > 0 else 1.0)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module inside DistributedDataParallel (or torch.compile), so keys carry no prefix."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    optimizer: Optional[torch.optim.Optimizer],
    scheduler: Optional[Any],
    epoch: int,
    step: int,
    encoder_config: EncoderConfig,
    mel_config: MelConfig,
    norm: Normalizer,
    train_config: Any,
    metrics: dict,
    rng_state: dict,
    extra: Optional[dict] = None,
) -> Path:
    """Write the checkpoint dict to `path` via a temporary file and os.replace (atomic on POSIX).

    `extra` adds keys of the trainer's own (k-means centroids, the fp16 grad scaler) to the dict.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": FORMAT,
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch),
        "step": int(step),
        "encoder_config": asdict(encoder_config),
        "mel_config": asdict(mel_config),
        "norm": norm.to_dict(),
        "train_config": train_config if isinstance(train_config, dict) else asdict(train_config),
        "metrics": metrics,
        "rng_state": rng_state,
        **(extra or {}),
    }
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


class CheckpointError(CmlError):
    """A file that cannot be used as a cml checkpoint; the message names it and says why."""


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The raw checkpoint dict; a missing, unreadable, truncated or foreign file is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load raises anything from EOFError to UnpicklingError
        raise CheckpointError(f"{path}: not a cml checkpoint ({type(err).__name__}: {one_line(err)[:200]})") from err
    if not isinstance(state, dict) or "encoder_config" not in state or "model" not in state:
        raise CheckpointError(f"{path}: not a cml checkpoint (no encoder_config/model)")
    if not isinstance(state.get("format", FORMAT), int) or state.get("format", FORMAT) > FORMAT:
        raise CheckpointError(f"{path}: not a cml checkpoint this code can read "
                              f"(format {state['format']!r}; this code reads up to {FORMAT})")
    return state


def load_encoder(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[Encoder, MelConfig, Normalizer]:
    """Rebuild the trained encoder (eval mode) with its log-mel front end and input standardisation."""
    state = read_checkpoint(path, map_location)
    try:
        encoder = Encoder(EncoderConfig(**state["encoder_config"]))
        encoder.load_state_dict(state["model"])
        mel, norm = MelConfig(**state["mel_config"]), Normalizer(**state["norm"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:  # missing keys, unknown fields, shapes
        raise CheckpointError(f"{path}: not a cml checkpoint of this code's encoder "
                              f"({type(err).__name__}: {one_line(err)[:200]})") from err
    if not (math.isfinite(norm.mean) and math.isfinite(norm.std) and norm.std > 0):
        raise CheckpointError(f"{path}: its input standardisation is unusable (mean {norm.mean}, std {norm.std})")
    return encoder.to(map_location).eval(), mel, norm


def untrained_encoder(encoder_config: EncoderConfig, seed: int = 0) -> Encoder:
    """The random-init baseline: same architecture, weights drawn from a seeded generator, eval mode.

    Uses a forked RNG so the caller's global torch random stream is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = Encoder(encoder_config)
    return encoder.eval()
