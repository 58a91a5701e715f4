"""Pure domain logic: plain functions and pydantic models. No Prefect, MLflow, boto3 or file IO here."""
