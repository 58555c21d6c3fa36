"""What a study holds, written and read in one place; `search/`, `distill/` and `reports/` all stand on it.

An Optuna study stores everything a compression study produces. This package owns that content, so the
packages above never import each other:

- `ledger.config`: the study's settings, one TOML per study in `studies/` (frozen dataclasses).
- `ledger.storage`: opening the study database (SQLite or PostgreSQL), passwords masked in every message.
- `ledger.world`: loading what the study works on: the teacher, its tokenizer, the dataset splits.
- `ledger.records`: the record schema, every study and trial attribute key: the baseline X, the settings
  the search ran with, one record per trial (`TrialRecord`), one per finalized trial (`FinalizedRecord`),
  the promoted list, and the trial's accuracy-floor constraint.
- `ledger.rules`: the one feasibility rule (optuna's own `trial.constraints`), the feasible Pareto front,
  the promotion rule and the counts.

Named `ledger` so that it is not confused with `studies/`, the folder of study TOML files and databases.
"""
