"""Reports rendered for people from the services' results (presentation only)."""
