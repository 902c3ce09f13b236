"""The TUI's panes, one module each, shown as tabs of the app's one TabbedContent."""
