"""llama-launcher: plan, launch and watch llama.cpp servers across several NVIDIA cards."""

__version__ = "0.1.0"
