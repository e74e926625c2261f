"""Spotify: track-feature CSV analysis and a spotipy client to pull tracks and push playlists."""
