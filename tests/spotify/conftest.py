"""Fixtures of the Spotify tests: every test here runs offline (autouse), and `fake` is the local fake of the
Spotify API (tests/fake_spotify.py) with 120 saved tracks. Clients pointed at it: tests/spotify/helpers.py."""
from __future__ import annotations

import os
import socket

import pytest

from tests.fake_spotify import FakeSpotify, track_id

LOOPBACK = ("127.0.0.1", "::1", "localhost")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Any connection or DNS lookup beyond this machine fails the test."""
    real_connect, real_lookup = socket.socket.connect, socket.getaddrinfo

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOOPBACK:
            raise AssertionError(f"test tried to reach {address}")
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in LOOPBACK:
            raise AssertionError(f"test tried to resolve {host}")
        return real_lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    for name in list(os.environ):
        if name.startswith(("SPOTIPY_", "CML_SPOTIFY_")):
            monkeypatch.delenv(name)


@pytest.fixture
def fake():
    with FakeSpotify(n_tracks=260) as server:
        server.saved = [track_id(i) for i in range(120)]
        yield server
