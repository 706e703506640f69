"""Thin absl entry points over the tfadaqat library (run from the repository root)."""
