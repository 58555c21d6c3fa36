"""The Optuna study: search space, objective, promotion rule and the `python -m search.run` CLI."""
