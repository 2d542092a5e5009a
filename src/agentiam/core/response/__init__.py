"""Automatic response to detections: the playbook file, pure matching and cool-downs
(docs/response.md). The service that carries the actions out is
``services/response.py``."""

from agentiam.core.response.playbooks import (
    ACTION_CLASSES,
    ACTION_KINDS,
    Action,
    AgentFacts,
    Condition,
    Cooldowns,
    Mode,
    Playbook,
    PlaybookFile,
    Webhook,
    load_playbooks,
    matching,
)

__all__ = [
    "ACTION_CLASSES",
    "ACTION_KINDS",
    "Action",
    "AgentFacts",
    "Condition",
    "Cooldowns",
    "Mode",
    "Playbook",
    "PlaybookFile",
    "Webhook",
    "load_playbooks",
    "matching",
]
