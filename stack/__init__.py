"""The product's processes run together without Docker: `python -m stack run` (what `make run` does)."""
