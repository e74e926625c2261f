"""Tests of cml.audio."""
