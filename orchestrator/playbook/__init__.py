"""The playbook: YAML in, a validated `Playbook` out, with ``file:line:col`` for every problem."""

from .loader import (
    LoadedPlaybook,
    PlaybookError,
    PlaybookIssue,
    load_playbook,
    load_playbook_text,
    playbook_json_schema,
)
from .models import Playbook

__all__ = [
    "LoadedPlaybook",
    "Playbook",
    "PlaybookError",
    "PlaybookIssue",
    "load_playbook",
    "load_playbook_text",
    "playbook_json_schema",
]
