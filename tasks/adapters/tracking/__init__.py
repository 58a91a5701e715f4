"""MLflow: tracked runs, the model registry, the pyfunc model format, and the plots logged there."""
