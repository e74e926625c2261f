"""Tests of cml.search."""
