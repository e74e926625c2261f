"""Tests of cml.cluster."""
