"""The test suite: one folder per package of cml (tests/data tests cml/data, ...), cross-cutting tests at the top."""
