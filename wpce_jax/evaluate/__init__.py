"""Evaluators: zero-shot classification (retrieval and linear probe are yet to come)."""
