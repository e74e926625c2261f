"""The encoder (one Transformer, six positional schemes), its checkpoints, and the musicnn baseline."""
