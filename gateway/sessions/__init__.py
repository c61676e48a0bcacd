"""Charging sessions, derived from each charge point's status transitions and energy counters."""
