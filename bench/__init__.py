"""Benchmarks: run each as ``python -m bench.<name> --help`` from the repository root."""
