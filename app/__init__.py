"""Fast coarse-to-fine abdominal CT segmentation (FLARE label order)."""

__version__ = "0.1.0"
