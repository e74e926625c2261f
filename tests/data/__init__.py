"""Tests of cml.data."""
