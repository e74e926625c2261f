"""Tests of cml.playlist."""
