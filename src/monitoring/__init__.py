"""Drift and performance monitoring with Evidently: reference vs current windows, reports, alerts."""
