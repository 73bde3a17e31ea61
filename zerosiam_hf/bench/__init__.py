"""Measuring code, used by scripts/measure_speed.py: benchmarks of the library; no command imports it."""
