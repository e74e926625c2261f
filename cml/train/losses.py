"""Training losses: SimCLR's NT-Xent, and an optional k-means term in the spirit of Deep Clustering Network.

NT-Xent (Chen et al. 2020): for N pairs, each of the 2N views must pick out its partner among the other
2N - 1 views by cosine similarity / temperature; the 2N - 2 non-partners are the negatives.

The k-means term (Yang et al. 2017, DCN) adds lambda * mean squared distance of each L2-normalised
embedding to its nearest of K centroids, pulling the space towards compact clusters. The centroids
are either updated by mini-batch k-means with per-centroid running counts (Sculley 2010), outside the
gradient, or learned by gradient descent with the encoder.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

KMEANS_MODES = ("minibatch", "learned")


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.1, groups: Optional[Tensor] = None) -> Tensor:
    """SimCLR's NT-Xent loss of N positive pairs (z1[i], z2[i]), averaged over the 2N views.

    `groups` (N,) optionally names what each pair came from (a track or a piece): views of two pairs
    with the same group are then not used as negatives, so a piece that happens to appear twice in a
    batch (or twice rendered) is not pushed away from itself. Without it, every pair has 2N - 2 negatives.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"expected two (N, D) tensors of equal shape, got {tuple(z1.shape)}, {tuple(z2.shape)}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2N, D)
    logits = z @ z.T / temperature  # (2N, 2N) cosine similarity / t
    idx = torch.arange(2 * n, device=z.device)
    partner = (idx + n) % (2 * n)
    exclude = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    if groups is not None:
        g = torch.cat([groups, groups]).to(z.device)
        exclude = exclude | ((g[:, None] == g[None, :]) & (idx[None, :] != partner[:, None]))
    logits = logits.masked_fill(exclude, float("-inf"))
    return F.cross_entropy(logits, partner)


class KMeansLoss(nn.Module):
    """Squared distance of L2-normalised embeddings to their nearest of K centroids.

    mode "minibatch": centroids are a buffer moved by `update` (Sculley's mini-batch k-means: each
    centroid steps towards the mean of its assigned points with rate n_assigned / running count, so
    it converges to the running mean of everything ever assigned to it). They are initialised from
    the first batch passed to `update`, so they start on the data.
    mode "learned": centroids are a parameter trained with the encoder (random unit vectors at start).
    """

    def __init__(self, k: int, dim: int, mode: str = "minibatch", generator: Optional[torch.Generator] = None):
        super().__init__()
        if mode not in KMEANS_MODES:
            raise ValueError(f"kmeans mode must be one of {KMEANS_MODES}, got {mode!r}")
        if k < 1:
            raise ValueError(f"kmeans k must be >= 1, got {k}")
        self.k, self.mode, self.generator = k, mode, generator
        init = F.normalize(torch.randn(k, dim, generator=generator), dim=1)
        if mode == "learned":
            self.centroids = nn.Parameter(init)
        else:
            self.register_buffer("centroids", init)
        self.register_buffer("counts", torch.zeros(k))
        self.register_buffer("initialised", torch.tensor(mode == "learned"))

    def distances(self, e: Tensor) -> Tensor:
        """(B, K) squared Euclidean distances of the normalised embeddings to the centroids."""
        e = F.normalize(e.float(), dim=1)
        return torch.cdist(e, self.centroids.float()).pow(2)

    def forward(self, e: Tensor) -> Tensor:
        """Mean over the batch of the squared distance to the nearest centroid (0 before initialisation)."""
        if not bool(self.initialised):
            return e.new_zeros((), dtype=torch.float32)
        return self.distances(e).min(dim=1).values.mean()

    @torch.no_grad()
    def update(self, e: Tensor) -> None:
        """One mini-batch k-means step on the batch `e` (B, D); a no-op in "learned" mode."""
        if self.mode != "minibatch":
            return
        x = F.normalize(e.detach().float(), dim=1)
        if not bool(self.initialised):
            # start on data: K distinct points of the first batch (padded with the random init if B < K)
            pick = torch.randperm(len(x), generator=self.generator)[: self.k]
            self.centroids[: len(pick)] = x[pick].to(self.centroids.dtype)
            self.initialised.fill_(True)
        assign = self.distances(x).argmin(dim=1)  # (B,)
        n = torch.bincount(assign, minlength=self.k).float()  # points per centroid in this batch
        sums = torch.zeros_like(self.centroids, dtype=torch.float32).index_add_(0, assign, x)
        self.counts += n
        hit = n > 0
        rate = (n[hit] / self.counts[hit])[:, None]  # Sculley: per-centroid learning rate 1 / count
        mean = sums[hit] / n[hit][:, None]
        self.centroids[hit] += (rate * (mean - self.centroids[hit].float())).to(self.centroids.dtype)
