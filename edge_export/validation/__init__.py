"""Accuracy metrics and gates, and latency statistics, shared by every target and device."""
