"""Tests of cml.embed."""
