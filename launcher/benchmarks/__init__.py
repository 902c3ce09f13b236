"""Benchmarks the docs cite, as programs: ``python -m launcher.benchmarks.NAME --help``.

They measure the product's own costs (the router, the fleet's start and polling, planning,
the GPU sampler, the TUI's refresh) and check the bench calibration and the NVML readings;
docs/ keeps their results and the command behind each. They sit at the front ends' level:
they drive the use cases and the TUI as a user would.
"""
