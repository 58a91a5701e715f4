"""Use cases: one module per pipeline stage. They take resolved objects, call the pure domain
(`tasks.domain`) and the IO adapters (`tasks.adapters`), and are wrapped by the Prefect tasks
(`tasks/*_tasks.py`) and called by single-stage CLI commands. No adapter imports a stage."""
