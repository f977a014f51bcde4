"""Scoring, efficiency measurement and synthetic phantoms (not part of the container image)."""
