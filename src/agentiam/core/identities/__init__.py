"""Humans, agents, agent keys and the agent lifecycle."""
