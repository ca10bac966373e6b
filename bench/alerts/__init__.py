"""Bench: the model-quality alert simulation (python -m bench.alerts)."""
