"""Aggregation of aligned low-rank updates across branch sizes, one rule per file."""
