"""Tests of cml.model."""
