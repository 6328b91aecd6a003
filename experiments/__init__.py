"""Runnable studies built on ham: `python -m experiments.<name> --help`."""
