"""Inference: predictors built from a model and a config (eager or a backend), images side by side."""
