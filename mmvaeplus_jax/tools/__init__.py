"""Command-line programs: `mmvaeplus-train`, `mmvaeplus-eval`."""
