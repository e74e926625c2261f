import math

import pytest
import torch
import torch.nn.functional as F

from cml.train.losses import KMeansLoss, nt_xent


def reference_nt_xent(z1, z2, t, same_group=None):
    """SimCLR's loss written out view by view: -log(exp(s_pos / t) / sum_{k != i} exp(s_ik / t))."""
    z = F.normalize(torch.cat([z1, z2]), dim=1).double()
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        j = (i + n2 // 2) % n2
        denom = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2)
                    if k != i and (k == j or same_group is None or not same_group(i, k)))
        total += -math.log(math.exp(float(z[i] @ z[j]) / t) / denom)
    return total / n2


def test_nt_xent_matches_reference():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert float(nt_xent(z1, z2, 0.3)) == pytest.approx(reference_nt_xent(z1, z2, 0.3), rel=1e-5)


def test_nt_xent_groups_drop_same_group_negatives():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    groups = torch.tensor([0, 1, 0, 2, 3])  # pairs 0 and 2 come from the same piece
    same = lambda i, k: int(groups[i % 5]) == int(groups[k % 5])  # noqa: E731
    got = float(nt_xent(z1, z2, 0.5, groups))
    assert got == pytest.approx(reference_nt_xent(z1, z2, 0.5, same), rel=1e-5)
    assert got != pytest.approx(float(nt_xent(z1, z2, 0.5)), rel=1e-3)
    assert float(nt_xent(z1, z2, 0.5, torch.arange(5))) == pytest.approx(float(nt_xent(z1, z2, 0.5)), rel=1e-6)


def test_nt_xent_lower_for_aligned_pairs():
    g = torch.Generator().manual_seed(2)
    z1 = torch.randn(16, 8, generator=g)
    z2 = z1 + 0.1 * torch.randn(16, 8, generator=g)
    shuffled = z2[torch.randperm(16, generator=g)]
    assert float(nt_xent(z1, z2, 0.1)) < float(nt_xent(z1, shuffled, 0.1)) - 1.0


def test_nt_xent_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="equal shape"):
        nt_xent(torch.randn(4, 3), torch.randn(5, 3))


def test_kmeans_loss_zero_on_centroids_and_positive_off_them():
    km = KMeansLoss(3, 4, mode="learned", generator=torch.Generator().manual_seed(0))
    on = km.centroids.detach()[[0, 1, 2, 1]] * 5.0  # any scale: embeddings are L2-normalised first
    assert float(km(on).detach()) == pytest.approx(0.0, abs=1e-6)
    assert float(km(torch.randn(4, 4, generator=torch.Generator().manual_seed(1))).detach()) > 0.01


def test_minibatch_update_moves_centroids_toward_assigned_points():
    g = torch.Generator().manual_seed(0)
    km = KMeansLoss(2, 2, mode="minibatch", generator=g)
    assert float(km(torch.randn(4, 2))) == 0.0  # not initialised: no pull yet
    km.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # initialised on these two points
    before = km.centroids.clone()
    target = torch.tensor([[1.0, 0.2]]) / math.hypot(1.0, 0.2)  # nearest to the centroid on (1, 0)
    km.update(target)
    c = int((before - torch.tensor([1.0, 0.0])).norm(dim=1).argmin())  # the centroid initialised on (1, 0)
    assert torch.equal(km.centroids[1 - c], before[1 - c])  # the other centroid stays put
    assert (km.centroids[c] - target[0]).norm() < (before[c] - target[0]).norm()
    assert km.counts[c] == 2 and km.counts[1 - c] == 1
    # Sculley: rate 1 / count = 1/2, so the centroid is the running mean of its two points
    assert torch.allclose(km.centroids[c], (before[c] + target[0]) / 2)


def test_learned_centroids_get_gradients_and_minibatch_ones_do_not():
    learned = KMeansLoss(3, 4, mode="learned")
    learned(torch.randn(5, 4)).backward()
    assert learned.centroids.grad is not None and learned.centroids.grad.abs().sum() > 0
    mb = KMeansLoss(3, 4, mode="minibatch")
    assert not any(True for _ in mb.parameters())


def test_kmeans_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        KMeansLoss(3, 4, mode="soft")
