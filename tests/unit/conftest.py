"""Unit tests: the pure parts, no Docker, no network."""
