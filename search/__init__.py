"""The Optuna side: budget-constrained search over subnets of a trained supernet."""
