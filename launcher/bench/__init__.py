"""Measuring: the closed-loop load generator, bench results and their calibration, the report."""
