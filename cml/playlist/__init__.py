"""Playlists from convex hulls of seed tracks, their files, and the library map to make them on."""

