"""The audit event schema. The tamper-evident trail builds on these events unchanged."""
