"""llama-server's interface: its flags (structured until spawn), its abilities, its wire formats."""
