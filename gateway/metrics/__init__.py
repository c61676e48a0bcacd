"""Prometheus metrics of every process: collectors over the counters the parts keep, the worker endpoint."""
