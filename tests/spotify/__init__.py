"""Tests of cml.spotify."""
