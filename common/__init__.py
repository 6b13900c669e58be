"""Model-agnostic training and evaluation machinery (data, optimisation, precision, metrics, logging)."""
