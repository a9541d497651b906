"""Helpers that build tiny models and datasets for tests and benchmarks."""
