"""Liveness and readiness: of the web process (/healthz, /readyz) and of each worker."""
