"""Tests of cml.evaluation."""
