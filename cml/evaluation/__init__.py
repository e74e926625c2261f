"""Scores of a feature space: probes, k-NN over held-out tracks, k-means agreement, the Compare table."""
