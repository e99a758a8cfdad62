"""Runnable example applications on a running llmos stack (`python -m examples.<name>`)."""
