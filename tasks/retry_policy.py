"""How the Prefect tasks that talk to a service (MLflow registry, S3) retry: twice, after about 2 s
and 10 s, jittered so that parallel runs do not retry in step. One definition, used by every such task."""
from __future__ import annotations

SERVICE_RETRIES = {"retries": 2, "retry_delay_seconds": [2, 10], "retry_jitter_factor": 0.5}
