"""Admin API keys and the roles that bound what each key may do."""
