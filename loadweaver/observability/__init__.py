"""Metrics, logging setup and (later) access logs and alerts."""
