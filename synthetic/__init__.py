"""Synthetic CT for training and testing: geometric phantoms, real-anatomy phantoms, the unlabelled
vessels and organ look-alikes around them, randomisation."""
