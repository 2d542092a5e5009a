"""Delegation: grants from humans to agents, token-exchange chains (RFC 8693), task
scoping with rich authorization details (RFC 9396) and the delegation graph."""
