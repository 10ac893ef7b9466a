"""Chaos tests: real processes, killed at random, against a real PostgreSQL."""
