"""Datasets: the nnU-Net v2 raw layout, converters, planning, preprocessing, sampling, augmentation and the phantom generator."""
