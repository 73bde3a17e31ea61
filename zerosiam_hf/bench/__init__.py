"""Measuring code, used by scripts/measure_speed.py and scripts/gpu_check.py: benchmarks of the library (the loss
head, the online loop, the generation backends, the roofline, the GPU check); no command imports it."""
