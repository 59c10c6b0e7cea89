"""Simulated LwM2M devices and fleets."""
