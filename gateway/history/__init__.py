"""Telemetry history: stored in bulk by the history consumer group, rolled up, pruned, queried by the charts."""
