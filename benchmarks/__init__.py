"""Throughput benchmarks, printed as ratios against a baseline (see README.md)."""
