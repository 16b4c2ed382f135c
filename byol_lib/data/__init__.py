"""Datasets, the two-view augmentation pipeline and the step-indexed loader."""
