"""Datasets: procedural shapes with masks, ImageNet-S reading, exports."""
