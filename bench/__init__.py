"""Benchmarks that print figures (not tests): run each as ``.venv/bin/python bench/<name>.py [--quick]``."""
