"""Tests of cml.train."""
