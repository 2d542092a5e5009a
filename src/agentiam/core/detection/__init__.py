"""Behavioural detection: observations from the audit trail, learned baselines,
streaming detectors, and continuous risk scores (docs/detection.md)."""
