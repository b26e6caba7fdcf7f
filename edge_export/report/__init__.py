"""report.json, the terminal table and progress display."""
