"""Scenario runners and reports: communication cost per round, benchmarks, plots."""
