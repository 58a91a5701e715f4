"""The machine and its services: settings and config files, the local stack's processes, the
Prefect server's admin API, notifications and progress bars."""
