"""Adapters at the IO boundary: files, models, MLflow, Great Expectations."""
