"""Prefect flows (wiring only) and the `rslm` CLI."""
