"""Datasets and data utilities for fewmask."""
