"""Adapters: HTTP API, storage and other ways in and out of the core."""
