"""Choosing settings: per-layer sensitivity sweeps (in worker processes or on Ray), settings from an accuracy target, plots."""
