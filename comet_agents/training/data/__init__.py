"""Seeded, deterministic synthetic data for training and evaluating CoMeT memories.

Families (see :data:`FAMILIES`): ``passkey``, ``user_behaviour``, ``agent_trajectory``, ``conversation``. Each
``generate(seed, target_tokens, count_tokens=approx_tokens) -> Sample`` returns a rendered stream (through
:func:`comet_agents.events.render`) and short-answer questions about it.
"""

from __future__ import annotations

from . import agent_trajectory, conversation, passkey, user_behaviour
from .common import FAMILIES, QA, Sample, TokenCounter, approx_tokens, generate_mixed, grow_stream
from .passkey import make_passkey_haystack

__all__ = [
    "FAMILIES",
    "QA",
    "Sample",
    "TokenCounter",
    "approx_tokens",
    "generate_mixed",
    "grow_stream",
    "make_passkey_haystack",
    "agent_trajectory",
    "conversation",
    "passkey",
    "user_behaviour",
]
