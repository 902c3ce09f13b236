"""The use cases: the only thing the front ends (``cli/``, ``tui/``) call."""
