"""Benchmarks: each script measures side by side in one run and prints a Markdown table."""
