"""Everything that spawns processes: building llama.cpp, probing and running llama-server."""
