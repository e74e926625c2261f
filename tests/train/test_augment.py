import math

import pytest
import torch

from cml.audio.mel import LogMel, MelConfig
from cml.train.augment import Augment, AugmentConfig

OFF = dict(gain_p=0, noise_p=0, tilt_p=0, eq_p=0, filter_p=0, shift_p=0, time_masks=0, freq_masks=0)


@pytest.fixture(scope="module")
def logmel() -> torch.Tensor:
    """A real log-mel of a chord with some noise, (64, 201)."""
    g = torch.Generator().manual_seed(0)
    t = torch.arange(32000) / 16000
    wave = sum(0.2 * torch.sin(2 * math.pi * f * t) for f in (220, 330, 440)) + 0.01 * torch.randn(32000, generator=g)
    return LogMel(MelConfig())(wave)


def only(**kw) -> Augment:
    return Augment(AugmentConfig(**{**OFF, **kw}))


def test_deterministic_under_a_seed_and_changes_the_input(logmel):
    aug = Augment()
    a = aug(logmel, torch.Generator().manual_seed(3))
    b = aug(logmel, torch.Generator().manual_seed(3))
    c = aug(logmel, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.allclose(a, logmel, atol=0.1)
    assert not torch.allclose(a, c, atol=0.1)
    assert a.shape == logmel.shape and torch.isfinite(a).all()


def test_everything_off_is_the_identity(logmel):
    out = Augment(AugmentConfig.off())(logmel, torch.Generator().manual_seed(0))
    assert torch.allclose(out, logmel, atol=1e-4)


def test_gain_shifts_loud_bins_by_a_constant(logmel):
    out = only(gain_p=1.0)(logmel, torch.Generator().manual_seed(1))
    diff = (out - logmel)[logmel > -5]  # well above the log floor, ln(g P + eps) = ln g + ln P
    assert diff.abs().mean() > 0.05
    assert torch.allclose(diff, diff[0].expand_as(diff), atol=1e-3)


def test_tilt_is_linear_across_mel_bins(logmel):
    out = only(tilt_p=1.0)(logmel, torch.Generator().manual_seed(2))
    loud = (logmel > -5).all(dim=1)  # bins loud in every frame
    per_bin = (out - logmel)[loud].mean(dim=1)
    bins = torch.arange(64)[loud].float()
    slope = (per_bin[-1] - per_bin[0]) / (bins[-1] - bins[0])
    assert abs(float(slope)) > 1e-3
    assert torch.allclose(per_bin, per_bin[0] + slope * (bins - bins[0]), atol=1e-3)


def test_shift_moves_mel_bins(logmel):
    out = only(shift_p=1.0, shift_bins=2)(logmel, torch.Generator().manual_seed(5))
    shifts = [s for s in (-2, -1, 1, 2) if torch.allclose(out[4:60], logmel[4 - s:60 - s], atol=1e-4)]
    assert len(shifts) == 1


def test_masks_fill_whole_rows_and_columns(logmel):
    out = only(time_masks=1, time_mask_frac=0.2, freq_masks=1, freq_mask_bins=8)(
        logmel, torch.Generator().manual_seed(7))
    constant_cols = (out == out[0:1]).all(dim=0).sum()
    constant_rows = (out == out[:, 0:1]).all(dim=1).sum()
    assert 0 < constant_cols <= 0.2 * logmel.shape[1] + 1  # one time mask of at most 20 % of the frames
    assert 0 < constant_rows <= 8 + 1  # one frequency mask of at most 8 bins


def test_noise_raises_quiet_bins(logmel):
    out = only(noise_p=1.0, snr_db=(0.0, 0.0))(logmel, torch.Generator().manual_seed(8))
    quiet = logmel < logmel.median()
    assert (out[quiet] - logmel[quiet]).mean() > 0.5


def test_switching_one_augmentation_off_keeps_the_others_draws(logmel):
    """Draws happen in a fixed order, so the masks land in the same place with or without noise."""
    masks = dict(time_masks=2, freq_masks=0)
    a = only(**masks)(logmel, torch.Generator().manual_seed(9))
    b = only(noise_p=1.0, **masks)(logmel, torch.Generator().manual_seed(9))
    masked = (a == a[0:1]).all(dim=0)
    assert masked.any()
    assert torch.equal(masked, (b == b[0:1]).all(dim=0))


def test_unknown_keys_raise():
    with pytest.raises(ValueError, match="unknown keys in train.augment"):
        AugmentConfig.from_dict({"pitch": 2})
