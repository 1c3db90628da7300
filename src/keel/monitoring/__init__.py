"""Monitoring: Prometheus metrics, traces, feedback and quality, drift, alerts."""
