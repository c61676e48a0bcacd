"""Alerts: built-in and admin-defined rules evaluated on the live telemetry, one alert per episode."""
