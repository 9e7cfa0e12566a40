"""Launchers: whole clusters from one call (local worker processes), and the run's result files."""
