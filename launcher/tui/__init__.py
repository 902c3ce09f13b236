"""The Textual app (``app.py``) and its panes (``screens/``).

Nothing below ``tui/`` and ``cli/`` imports Textual.
"""
