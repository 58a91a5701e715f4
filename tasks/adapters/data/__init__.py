"""Datasets on disk and in S3, and their Great Expectations validation."""
