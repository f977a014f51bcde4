"""Scoring and efficiency measurement (not part of the container image)."""
