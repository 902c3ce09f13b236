"""GPUs and the host they sit in, as plain data (NVML stays inside ``nvml.py``)."""
