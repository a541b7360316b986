"""Backends: where sandboxes run."""
