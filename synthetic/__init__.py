"""Synthetic CT for training and testing: geometric phantoms, real-anatomy phantoms, randomisation."""
