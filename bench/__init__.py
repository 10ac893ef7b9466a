"""Benchmarks (run with `python -m bench.<name>`); see bench/README.md."""

from __future__ import annotations
