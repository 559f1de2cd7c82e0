"""Regions: an image (or precomputed features) -> boxes and one feature vector per box."""
