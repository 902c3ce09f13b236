"""Measuring: the closed-loop load generator, and later layout comparisons."""
