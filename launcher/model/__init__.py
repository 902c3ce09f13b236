"""GGUF models: reading headers without the weights, and writing synthetic ones."""
