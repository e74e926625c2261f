"""Augmentations for the two views of a contrastive pair, applied to log-mel crops and driven by a
torch.Generator, so one seed gives the same views on any machine, in any worker, after any resume.

Why on the log-mel and not on the waveform: the training loop crops from log-mels cached in memory (much
faster than decoding), and every augmentation here has an exact or close log-mel form. Gain, EQ and
filters multiply the mel power, additive noise adds to it; both are done in the power domain
(P = exp(x) - offset, x' = ln(P' + offset)), so the -13.8 floor of digital silence stays where the front
end puts it. Pitch shift is approximated by shifting mel bins, time/frequency masking is SpecAugment.

The timbre trap: in the default corpus every piece is played by randomly drawn General MIDI instruments,
so two crops of one track share their instruments, and the cheapest way to tell positives from negatives
is timbre, not style. Augmentations that perturb timbre (random spectral tilt, a peaking EQ band, low/
high-pass roll-off, mel-bin shifts) are therefore ON by default: they make the instrument colour an
unreliable cue, so the encoder must rely on what survives them (rhythm, harmony, texture). The strongest
remedy is data, not augmentation: when the corpus holds several renderings of one piece with different
instruments (`draws: 2`), the training loop takes the two views from two different renderings (see
`cml.train.loop`), so the positive pair differs in timbre by construction.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from cml.params import build

log = logging.getLogger(__name__)


@dataclass
class AugmentConfig:
    """Each augmentation: a probability (0 turns it off) and its range.

    The defaults are deliberately mild: on a short training budget (the default recipe's), strong settings keep
    the NT-Xent loss near its chance level ln(2N - 1), so the encoder learns next to nothing, while mild ones let
    it fall steadily.
    """

    gain_p: float = 1.0  # random gain ...
    gain_db: float = 6.0  # ... uniform in +-gain_db dB
    noise_p: float = 0.3  # additive coloured noise ...
    snr_db: tuple[float, float] = (10.0, 30.0)  # ... at a signal-to-noise ratio uniform in this range (dB)
    tilt_p: float = 1.0  # spectral tilt (timbre): a linear dB ramp across the mel bins ...
    tilt_db: float = 8.0  # ... from -tilt/2 to +tilt/2 dB, tilt uniform in +-tilt_db
    eq_p: float = 0.5  # one peaking EQ band (timbre) ...
    eq_db: float = 6.0  # ... gain uniform in +-eq_db dB, centre anywhere, width 2-12 bins
    filter_p: float = 0.1  # low- or high-pass roll-off (timbre) at a random cutoff, 1-4 dB per bin
    shift_p: float = 0.3  # mel-bin shift (a cheap pitch shift / formant shift) ...
    shift_bins: int = 2  # ... by a non-zero integer in +-shift_bins, edges replicated
    time_masks: int = 1  # SpecAugment time masks per view ...
    time_mask_frac: float = 0.1  # ... each up to this fraction of the frames
    freq_masks: int = 1  # SpecAugment frequency masks per view ...
    freq_mask_bins: int = 8  # ... each up to this many mel bins

    @classmethod
    def from_dict(cls, d: dict | None) -> "AugmentConfig":
        d = dict(d or {})
        if "snr_db" in d:
            d["snr_db"] = tuple(float(v) for v in d["snr_db"])
        return build(cls, d, "train.augment")

    @classmethod
    def off(cls) -> "AugmentConfig":
        """No augmentation at all (crops only)."""
        return cls(gain_p=0, noise_p=0, tilt_p=0, eq_p=0, filter_p=0, shift_p=0, time_masks=0, freq_masks=0)


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _coin(g: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=g)) < p  # always draws, so p = 0 leaves the stream unchanged


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


class Augment:
    """Random view of one log-mel crop (n_mels, frames); `log_offset` must match the front end's.

    Draws are made in a fixed order whatever is switched on or off, so turning one augmentation off
    does not change the random draws of the others.
    """

    def __init__(self, config: AugmentConfig = AugmentConfig(), log_offset: float = 1e-6):
        self.config, self.log_offset = config, log_offset

    def __call__(self, x: Tensor, g: torch.Generator) -> Tensor:
        c = self.config
        M, T = x.shape
        bins = torch.arange(M, dtype=torch.float32)
        db = torch.zeros(M)  # per-bin gain in dB: gain + tilt + EQ + filter
        # each block draws all its numbers first, then decides: the stream is the same with it on or off
        gain = _uniform(g, -c.gain_db, c.gain_db)
        if _coin(g, c.gain_p):
            db += gain
        tilt = _uniform(g, -c.tilt_db, c.tilt_db)
        if _coin(g, c.tilt_p):
            db += tilt * (bins / max(M - 1, 1) - 0.5)
        eq_gain, eq_centre, eq_width = _uniform(g, -c.eq_db, c.eq_db), _uniform(g, 0, M - 1), _uniform(g, 2, 12)
        if _coin(g, c.eq_p):
            db += eq_gain * torch.exp(-0.5 * ((bins - eq_centre) / (eq_width / 2)) ** 2)
        lowpass, cutoff, slope = _coin(g, 0.5), _uniform(g, M / 8, 7 * M / 8), _uniform(g, 1.0, 4.0)
        if _coin(g, c.filter_p):
            beyond = (bins - cutoff) if lowpass else (cutoff - bins)
            db -= (slope * beyond.clamp(min=0)).clamp(max=60.0)
        snr = _uniform(g, *c.snr_db)
        noise_slope = _uniform(g, -2.0, 2.0)
        noise_seed = int(torch.randint(2**62, (), generator=g))  # the noise field only when it is used
        add_noise = _coin(g, c.noise_p)

        power = (x.float().exp() - self.log_offset).clamp(min=0) * (db * (math.log(10) / 10)).exp()[:, None]
        if add_noise:
            colour = torch.exp(noise_slope * (bins / max(M - 1, 1) - 0.5))  # white-ish to pink/brown or blue
            level = power.mean() / (10 ** (snr / 10)) / colour.mean()
            u = torch.rand(2, M, T, generator=torch.Generator().manual_seed(noise_seed))
            # gamma(2)/2, mean 1: a mel band pools a few noisy FFT bins; 1 - u is in (0, 1], so log is finite
            fluct = -torch.log((1 - u[0]) * (1 - u[1])) / 2
            power = power + level * colour[:, None] * fluct
        y = torch.log(power + self.log_offset)

        shift = _randint(g, 1, max(c.shift_bins, 1)) * (1 if _coin(g, 0.5) else -1)
        if _coin(g, c.shift_p) and c.shift_bins > 0:
            src = (torch.arange(M) - shift).clamp(0, M - 1)  # shift up by `shift` bins, edges replicated
            y = y[src]

        fill = y.mean()
        for _ in range(c.time_masks):
            w, s = _randint(g, 0, int(c.time_mask_frac * T)), _uniform(g, 0, 1)
            start = int(s * (T - w + 1))
            y[:, start:start + w] = fill
        for _ in range(c.freq_masks):
            w, s = _randint(g, 0, min(c.freq_mask_bins, M)), _uniform(g, 0, 1)
            start = int(s * (M - w + 1))
            y[start:start + w, :] = fill
        return y.to(x.dtype)
