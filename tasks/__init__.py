"""reasoning-slm: pure domain logic (`tasks.domain`), IO adapters (`tasks.adapters`) and the thin
Prefect tasks that wrap them (the other modules here). Importing this package imports nothing heavy."""
