"""The `embedlib` command. `embedlib --help` imports neither Ray, FAISS nor torch: each
sub-command imports what it needs when it runs."""

from embedlib.cli.commands import main

__all__ = ["main"]
