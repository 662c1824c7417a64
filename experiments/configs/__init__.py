"""Experiment configs: `get_config(arg)` per file, big_vision style (see defaults.py)."""
