"""Experiment configs: `python -m wpce_jax.main --config=configs/NAME.py[:ARG]` loads NAME.py by path and calls its
get_config(ARG). They import shared pieces as a package (`from configs import common`); wpce_jax/cli.py's
ConfigFileParser makes this package importable from any working directory."""
