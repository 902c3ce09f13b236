"""The Textual app. Nothing below ``tui/`` and ``cli.py`` imports Textual."""
