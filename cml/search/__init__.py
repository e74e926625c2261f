"""Nearest neighbours: exact cosine search, the approximate index of large libraries, k-NN scores."""
