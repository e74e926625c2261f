"""Contrastive training: augmentations, losses, the data pipeline, the loop, and pretraining on the pool."""

