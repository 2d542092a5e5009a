"""The control plane's HTTP API (FastAPI on the admin paths, plain ASGI middleware)."""
