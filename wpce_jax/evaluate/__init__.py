"""Evaluation: zero-shot classification, linear probe, image<->text retrieval and the ranking metrics behind them;
`python -m wpce_jax.evaluate --workdir=DIR` runs them on a checkpoint (see evaluator.py and registry.py)."""
