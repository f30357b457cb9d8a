"""Benchmarks: `make bench` runs every module here with a `run()` and records the figures."""
